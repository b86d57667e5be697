# Sourced by scripts/main and scripts/test: make sure the tools they need are
# here, installing what is missing, and say clearly what cannot be fixed.

set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        log "installing the Rust toolchain with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
            || die "no Rust toolchain and rustup could not be installed: install Rust 1.95 or newer (https://rustup.rs)"
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

rust_version=$(rustc --version | awk '{print $2}')
required=1.95
if [ "$(printf '%s\n%s\n' "$required" "$rust_version" | sort -V | head -n1)" != "$required" ]; then
    die "Rust $rust_version is too old: Chainmail needs $required or newer (rustup update stable)"
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        log "installing $component"
        rustup component add "$component" || die "cannot install $component: rustup component add $component"
    fi
done

# The browser build: the rustup toolchain has no wasm32 standard library,
# so the client-side crates are built with Debian's rustc-web and the
# standard library built from source (rust-web-src); installed on demand,
# only by the scripts that build for the browser.
ensure_wasm_toolchain() {
    if [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] \
        && command -v wasm-ld >/dev/null 2>&1; then
        return
    fi
    command -v apt-get >/dev/null 2>&1 \
        || die "the browser build needs Debian's rustc-web, cargo-web, rust-web-src and lld packages"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    log "installing the wasm toolchain (Debian packages rustc-web cargo-web rust-web-src lld)"
    $sudo apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rustc-web cargo-web rust-web-src lld \
        || die "cannot install the wasm toolchain: apt-get install rustc-web cargo-web rust-web-src lld"
}

# The network lab (scripts/netlab): network namespaces need root; nftables
# does the NAT, the loss and the counting. Installed on demand, only by the
# scripts that run the lab.
ensure_netlab_tools() {
    [ "$(id -u)" -eq 0 ] || die "the network lab needs root (network namespaces): run the tests as root"
    command -v ip >/dev/null 2>&1 && command -v nft >/dev/null 2>&1 && return
    command -v apt-get >/dev/null 2>&1 \
        || die "the network lab needs iproute2 and nftables"
    log "installing the network lab's tools (Debian packages iproute2 nftables iptables)"
    apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables iptables \
        || die "cannot install the network lab's tools: apt-get install iproute2 nftables iptables"
}

# The fuzz targets (scripts/fuzz-smoke): cargo-fuzz from crates.io, and a
# compiler that takes libFuzzer's flags: rustup's nightly if it is there,
# else the stable compiler with its unstable flags unlocked.
ensure_fuzz_tools() {
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        log "installing cargo-fuzz"
        cargo install cargo-fuzz --locked --version 0.13.2 \
            || die "cannot install cargo-fuzz: cargo install cargo-fuzz"
    fi
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        FUZZ_TOOLCHAIN=(+nightly)
    else
        FUZZ_TOOLCHAIN=()
        export RUSTC_BOOTSTRAP=1
    fi
}
