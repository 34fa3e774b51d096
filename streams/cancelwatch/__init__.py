"""cancelwatch: a streaming monitor of Amazon sellers cancellation rate."""

from cancelwatch import compiled

compiled.install()
