# The pipeline's image: `ehb worker`, `ehb sink`, `ehb simulate`, `ehb migrate` ... (see
# docker-compose.yml). Configured only through EHB_* variables and secret files.
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/ehb
COPY pyproject.toml README.md ./
COPY ehb ./ehb
COPY producers ./producers
COPY streams ./streams
COPY sinks ./sinks
COPY schemas ./schemas
COPY console ./console
RUN pip install . \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/ehb --create-home ehb

USER ehb
ENV EHB_DATA_DIR=/var/lib/ehb
EXPOSE 9400 8400
ENTRYPOINT ["ehb"]
CMD ["--help"]
