# One image for the operator, the workers and the scraper: `matchenv operator run`, `matchenv worker`, ...
# BASE_IMAGE: any Debian-like image with Python 3.11+ and venv (the public python:3.11-slim by default; the dev kit
# builds one from Debian's packages where no registry is reachable).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY src ./src
# the locked versions: two builds of one commit install the same packages
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --constraint requirements.lock . \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools

FROM ${BASE_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin matchenv
COPY --from=build /opt/venv /opt/venv
# Nothing is written at run time: bytecode is compiled at install, logs go to stdout (read-only root filesystem).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
ENTRYPOINT []
CMD ["matchenv", "--help"]
