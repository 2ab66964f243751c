# syntax=docker/dockerfile:1
#
# pg-bkp as one container image with two entry points:
#   * AWS Lambda (the default): CMD names the handler; `sam build` builds this file (template.yaml).
#     `docker run` alone starts the base image's runtime interface emulator on port 8080: set
#     PGBKP_LOCAL_RUNNER=1 there (README.md, "Run the image locally").
#   * The local runner, by overriding the entrypoint, from the `runner` target (the same image plus
#     prometheus_client for HTTP_ADDR and METRICS_TEXTFILE; docker-compose.yml builds it):
#       docker build --target runner -t pgbkp-runner .
#       docker run --rm --env-file .env --entrypoint pgbkp pgbkp-runner serve
#
# Needs layers/postgresql first (`make layer`, i.e. bash layers/build.sh): this file only copies it.
# Either platform, from the same file: the base image is published for both, and the layer is built for
# one (layers/README.md, arm64):
#   bash layers/build.sh && docker build --platform linux/amd64 -t pgbkp .
#   ARCH=arm64 bash layers/build.sh && docker build --platform linux/arm64 -t pgbkp .
# A layer of the other architecture fails the build below, at `pg_dump --version`.
# Lambda ignores HEALTHCHECK; the compose file sets one for the runner.
FROM public.ecr.aws/lambda/python:3.12 AS base

# The PostgreSQL 18 client tools and the libraries they need, laid out as the Lambda layer is
# (/opt/bin, /opt/lib): the very files tests/test_layer_binaries.py runs. See layers/README.md.
COPY layers/postgresql/bin/ /opt/bin/
COPY layers/postgresql/lib/ /opt/lib/
COPY layers/postgresql/licenses/ /opt/licenses/
COPY layers/postgresql/MANIFEST.txt /opt/MANIFEST.txt

# Our pg_dump comes first on PATH. /opt/lib stays last on LD_LIBRARY_PATH, in the order Lambda uses
# for layers: Amazon Linux's own libraries (OpenSSL for Python too) win where the image has them,
# the layer supplies the rest. The binaries also find /opt/lib through their RUNPATH.
ENV PATH=/opt/bin:/var/lang/bin:/usr/local/bin:/usr/bin:/bin \
    LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib \
    POWERTOOLS_SERVICE_NAME=pgbkp \
    POWERTOOLS_METRICS_NAMESPACE=pgbkp \
    PYTHONDONTWRITEBYTECODE=1

COPY pyproject.toml README.md LICENSE /tmp/pgbkp-src/
COPY handler/ /tmp/pgbkp-src/handler/
# The build fails here, not at the first invocation, when a dependency or a client tool is missing:
# importing the handler loads everything the runtime loads (Powertools, its Tracer, boto3); apprise is
# imported only when NOTIFY_URLS is set, so it is checked on its own.
# tests/test_lambda_runtime.py serves events through awslambdaric from the same `pip install`.
RUN pip install --no-cache-dir /tmp/pgbkp-src \
    && rm -rf /tmp/pgbkp-src \
    && pg_dump --version \
    && psql --version \
    && python3 -c "import pgbkp.lambda_function" \
    && python3 -c "import apprise" \
    && pgbkp --help > /dev/null

CMD ["pgbkp.lambda_function.lambda_handler"]

# The local runner (docker-compose.yml builds this target): the same image plus the `runner` extra
# (prometheus_client, for HTTP_ADDR's /metrics and METRICS_TEXTFILE). pip takes the extra's pinned
# requirement from the installed pgbkp's metadata, so the pin lives in pyproject.toml only.
FROM base AS runner
# DL3013 (pin versions): pgbkp is the copy installed above, and its extra's pin is pyproject.toml's.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir "pgbkp[runner]" \
    && python3 -c "import prometheus_client, pgbkp.metrics"

# The Lambda function, and the default target (sam build, plain docker build): without the runner extra,
# which the function would never use.
FROM base AS lambda
