# One myko-django worker under daphne. Set DATABASE_URL / REDIS_URL for production.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV DJANGO_ALLOWED_HOSTS="*" PORT=8000
EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --noinput && exec daphne -b 0.0.0.0 -p ${PORT} --websocket-max-message-size 16777216 --websocket-max-frame-size 16777216 project.asgi:application"]
