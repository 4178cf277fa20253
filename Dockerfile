# Drift monitor: one image for every subcommand (worker, simulate, replay, demo, ...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --uid 10001 --create-home --home-dir /home/monitor monitor

WORKDIR /app
COPY --chown=monitor:monitor . /app
RUN pip install .

# The installed package lives in site-packages, away from the repository's schemas/:
# point the contract at the copy in /app. Worker state (Faust tables) goes under /app,
# which the unprivileged user owns.
ENV MONITOR_SCHEMA_DIR=/app/schemas \
    MONITOR_DATA_DIR=/app/.monitor-data

USER monitor
EXPOSE 9108

ENTRYPOINT ["monitor"]
CMD ["worker"]
