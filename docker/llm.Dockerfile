# The `llm` service of docker-compose.yml: SmolLM2-135M-Instruct (98 MB) behind
# llama-cpp-python's OpenAI-compatible server, started by `quorum llm serve` as on a laptop.
# llama-cpp-python compiles from source here, hence the toolchain (about 5 minutes).
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared shared
COPY worker worker
COPY producer producer
COPY simulator simulator
RUN pip install --no-cache-dir '.[local]' \
    && useradd --create-home --uid 10001 quorum
USER quorum
EXPOSE 8000
CMD ["quorum", "llm", "serve", "--host", "0.0.0.0", "--port", "8000"]
