# The cancelwatch image: the worker, the simulator and the on-call receiver
# are all `cancelwatch <command>` (docker-compose.yml picks the command).
# The first stage compiles the core (setup.py, Cython) into a wheel with the full
# image's C compiler; the image itself stays slim.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY streams ./streams
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home --uid 10001 cancelwatch \
    && mkdir -p /data && chown cancelwatch /data
USER cancelwatch
ENV CANCELWATCH_DATA_DIR=/data/state
VOLUME /data
CMD ["cancelwatch", "worker"]
