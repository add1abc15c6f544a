# pgq-bridge image: the built CLI on PATH as `pgq-bridge`.
# Node 24, the active LTS (Node 20 reached end of life in April 2026). CI tests the suite on both
# Node 20 and Node 24; either base image works.
FROM node:24-slim

WORKDIR /app

# Dependencies first, so source edits do not invalidate this layer.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

COPY . .
RUN npm run build \
  && npm prune --omit=dev --no-audit --no-fund \
  && chmod +x bin/pgq-bridge.js \
  && ln -s /app/bin/pgq-bridge.js /usr/local/bin/pgq-bridge

ENV NODE_ENV=production \
  LOG_FORMAT=json
USER node

CMD ["pgq-bridge", "start"]
