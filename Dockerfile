# signald in a container: small (python slim, no compilers), non-root, health-checked.
#   docker build -t signald .
#   docker run -p 8765:8765 -v signald-data:/var/lib/signald \
#     -e SIGNALD_AUTH_MODE=jwt -e SIGNALD_AUTH_JWT_SECRET=... signald
# See docs/deploy.md.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY signald ./signald
# The browser demo (signald serve --demo): the build puts them into the wheel as signald/_demo/.
COPY examples/web ./examples/web
COPY clients/js/signald.js ./clients/js/signald.js
# Build wheels for signald and its dependencies here, so the final image has no build tools.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
COPY --from=build /wheels /wheels
# Not pinned by hand: the only signald on offer is the wheel built above from this source (--no-index).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels signald \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 signald \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/signald --create-home signald
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/signald
# Listen on every interface of the container; history on the volume; logs as JSON lines on stderr.
# Auth mode "none" refuses a non-loopback address: set SIGNALD_AUTH_MODE=jwt and a secret or key
# (or SIGNALD_SERVER_INSECURE=true for a throwaway trial).
ENV SIGNALD_SERVER_HOST=0.0.0.0 \
    SIGNALD_SERVER_DB=/var/lib/signald/signald.db \
    SIGNALD_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/signald"]
EXPOSE 8765
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["signald", "health", "http://127.0.0.1:8765/readyz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["signald"]
CMD ["serve"]
