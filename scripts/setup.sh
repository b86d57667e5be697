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
