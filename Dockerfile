# One myko-django worker under daphne. For production set DATABASE_URL, REDIS_URL,
# DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS (the hosts browsers reach it by: WebSocket
# Origins are checked against it; clients that send no Origin always pass).
FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV DJANGO_DEBUG=0 DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1" PORT=8000
EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --noinput && exec daphne -b 0.0.0.0 -p ${PORT} --websocket-max-message-size 16777216 --websocket-max-frame-size 16777216 project.asgi:application"]
