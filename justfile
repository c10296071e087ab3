# wasmvmm recipes. `just build` leaves bin/wasmvmm, bin/plugins/*.wasm and
# bin/guest.elf, where bin/wasmvmm finds them by default.

default: build

# Debian packages for the guest build and the tests
deps:
    scripts/install-deps.sh

build:
    mkdir -p bin
    go build -o bin/wasmvmm ./host/cmd/wasmvmm
    go run ./host/cmd/wasmvmm build-plugins bin/plugins
    make -s -C testsuite/guest
    cp testsuite/guest/build/guest.elf bin/guest.elf

demo: build
    bin/wasmvmm demo

test:
    go test ./...

ci:
    bash .ci/run

# the version-compatibility matrix (reports in bin/compat/)
compat-matrix:
    go run ./host/cmd/wasmvmm compat-matrix --out bin/compat

bench:
    go test -run '^$' -bench . -benchtime 2x ./...
