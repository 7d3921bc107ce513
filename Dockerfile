# One image for every Quorum role: worker, API, Flower, LLM simulator (see docker-compose.yml
# and deploy/k8s/). Dependencies are pinned by constraints.txt, the project's dependency closure
# at the versions it is tested with; regenerate it when pyproject.toml's dependencies change.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 quorum \
    && useradd --system --uid 10001 --gid quorum --home-dir /app --shell /usr/sbin/nologin quorum \
    && mkdir -p /app /data \
    && chown quorum:quorum /data

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY shared shared
COPY worker worker
COPY producer producer
COPY simulator simulator
COPY bench bench
COPY quorum quorum
RUN pip install -c constraints.txt '.[api,flower]'

USER quorum
VOLUME ["/data"]
EXPOSE 5555 8000 8080
# Each service picks its role with its own command; a bare `docker run` starts a worker.
CMD ["celery", "-A", "quorum.worker.app", "worker", "--loglevel", "INFO"]
