# The cancelwatch image: the worker, the simulator and the on-call receiver
# are all `cancelwatch <command>` (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 cancelwatch \
    && mkdir -p /data && chown cancelwatch /data
USER cancelwatch
ENV CANCELWATCH_DATA_DIR=/data/state
VOLUME /data
CMD ["cancelwatch", "worker"]
