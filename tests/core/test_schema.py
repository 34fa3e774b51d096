"""`cancelwatch schema` and the committed docs/events.schema.json."""

from __future__ import annotations

import json
from pathlib import Path

from cancelwatch import cli

from cancelwatch.core import events

from cancelwatch.tools import schema_cli

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "events.schema.json"


def test_committed_schema_matches_the_event_definitions():
    assert SCHEMA_FILE.read_text() == schema_cli.render(), (
        "docs/events.schema.json is stale: regenerate it with "
        "`cancelwatch schema > docs/events.schema.json`")


def test_command_prints_the_schema_as_indented_json(capsys):
    assert cli.main(["schema"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("{\n  ")
    assert json.loads(output) == events.json_schema()


def test_schema_names_every_event_type_and_its_required_fields():
    schema = json.loads(schema_cli.render())
    definitions = schema["$defs"]
    tags = {definition["properties"]["type"]["enum"][0]: definition
            for name, definition in definitions.items() if "type" in definition.get("properties", {})}
    assert set(tags) == {"order_placed", "order_status_changed", "order_cancelled"}
    assert {"event_id", "seller_id", "purchase_date", "occurred_at"} <= set(tags["order_placed"]["required"])
    assert {"initiator", "reason", "buyer_requested", "order_status_at_cancel"} <= set(
        tags["order_cancelled"]["required"])
    assert "items" not in tags["order_cancelled"]["required"]
