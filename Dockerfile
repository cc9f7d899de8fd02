FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY gateway gateway
COPY persistence persistence
RUN pip install --no-cache-dir '.[scylla,redis,s3]'
ENV CANOPY_HOST=0.0.0.0 CANOPY_PORT=8080 CANOPY_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["canopy"]
CMD ["serve"]
