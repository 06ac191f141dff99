# One image per service: docker build --build-arg SERVICE=identity -t lianyu/identity .
# (No container engine runs on the development machines; CI tests the binaries and the
# rendered manifests instead.)
FROM rust:1.95-bookworm AS build
ARG SERVICE
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p lianyu-${SERVICE} && cp target/release/lianyu-${SERVICE} /service

FROM debian:bookworm-slim
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin lianyu
COPY --from=build /service /usr/local/bin/service
USER 10001:10001
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/service"]
