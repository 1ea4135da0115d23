# The API and the worker, for docker-compose.yml (PostgreSQL/PostGIS, Meilisearch and
# Redis, the rate limits' shared store, run in their own containers).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY directory ./directory
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . && useradd --system directory
USER directory
EXPOSE 8000
CMD ["directory", "serve", "--bind", "0.0.0.0:8000"]
