#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of keepring's parsers of untrusted input (fuzz/, built
# with cargo fuzz on libFuzzer). Installs cargo-fuzz on first use into a tools cache that
# later runs reuse, builds every target on the current toolchain (stable is enough: no
# sanitizer, so no nightly-only flag), then runs each target for a bounded time starting
# from its seed corpus (fuzz/corpus/<target>/, never written to), and fails if any target
# crashes, hangs or runs out of memory. Prints each command, and per target the coverage
# libFuzzer measured on the seeds and at the end.
#
#   scripts/fuzz.sh [TARGET...]      default: every target in fuzz/fuzz_targets/
#
# Environment:
#   FUZZ_SECONDS            seconds per target (default 16: six targets, 96 s in all)
#   KEEPRING_TOOLS_DIR      tools cache (default ~/.cache/keepring-tools): cargo-fuzz in
#                           bin/, the fuzz build in fuzz-target/ (apart from ./target, so
#                           the main build is not invalidated, and kept between clones)
#
# What a run learns goes to fuzz/work/<target>/corpus (not committed; emptied at each
# run). A crash leaves its input in fuzz/artifacts/<target>/; replay it with
#   cargo fuzz run --sanitizer none --debug-assertions <target> <file>
# from the repository root (README "Fuzzing" has longer sessions).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned, so a new cargo-fuzz release never changes what CI builds unannounced.
cargo_fuzz_version=0.13.2
seconds=${FUZZ_SECONDS:-16}
tools_dir=${KEEPRING_TOOLS_DIR:-${HOME:-/root}/.cache/keepring-tools}
target_dir=$tools_dir/fuzz-target
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

die() {
    printf 'scripts/fuzz.sh: %s\n' "$*" >&2
    exit 1
}

run() {
    printf '+ %s\n' "$*"
    "$@"
}

[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a positive whole number, not '$seconds'"
if ! command -v cargo >/dev/null && [[ -x ${HOME:-/root}/.cargo/bin/cargo ]]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain with rustup)"
export PATH="$tools_dir/bin:$PATH"

installed=$(cargo fuzz --version 2>/dev/null || true)
if [[ $installed != "cargo-fuzz $cargo_fuzz_version" ]]; then
    run cargo install --locked --root "$tools_dir" "cargo-fuzz@$cargo_fuzz_version"
fi
printf 'toolchain: %s; %s; %s\n' "$(cargo --version)" "$(rustc --version)" "$(cargo fuzz --version)"

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=()
    for file in fuzz/fuzz_targets/*.rs; do
        name=${file##*/}
        targets+=("${name%.rs}")
    done
fi

# No sanitizer: AddressSanitizer needs nightly's -Zsanitizer, and safe Rust gains little
# from it. Still caught: panics (failed assertions, and arithmetic overflow since debug
# assertions are on), hangs (-timeout) and memory blow-ups (libFuzzer's RSS limit).
# Each step must use the same flags, or `cargo fuzz run` would build again.
flags=(--sanitizer none --debug-assertions --target-dir "$target_dir")
started_at=$SECONDS
run cargo fuzz build "${flags[@]}"
printf 'build: %ds\n' "$((SECONDS - started_at))"

# Longest input per target: past HEADER_BYTES_MAX (16 KiB) for heads, a config file of
# some size, short for locators.
max_len_of() {
    case $1 in
    request_head) echo 20000 ;;
    cluster_config | chunked | md5_batch) echo 4096 ;;
    *) echo 1024 ;;
    esac
}

summary=()
failed=()
for target in "${targets[@]}"; do
    [[ -f fuzz/fuzz_targets/$target.rs ]] || die "no fuzz target '$target' in fuzz/fuzz_targets/"
    [[ -d fuzz/corpus/$target ]] || die "no seed corpus fuzz/corpus/$target/"
    work=fuzz/work/$target
    rm -rf "$work"
    mkdir -p "$work/corpus" "fuzz/artifacts/$target"
    printf '\n== %s: %s s\n' "$target" "$seconds"
    status=0
    # libFuzzer writes what it learns to the first corpus directory only.
    run cargo fuzz run "${flags[@]}" "$target" "$work/corpus" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -max_len="$(max_len_of "$target")" \
        -print_final_stats=1 >"$work/log" 2>&1 || status=$?
    grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::number_of_executed_units|^==[0-9]+== ERROR|panicked at|^SUMMARY' \
        "$work/log" || true
    seeds=$(grep -Eo 'INITED cov: [0-9]+ ft: [0-9]+' "$work/log" | head -n1 | sed 's/INITED //' || true)
    end=$(grep -Eo 'DONE +cov: [0-9]+ ft: [0-9]+' "$work/log" | tail -n1 | sed 's/DONE *//' || true)
    runs=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$work/log" | grep -Eo '[0-9]+$' || echo '?')
    if [[ $status -ne 0 ]]; then
        failed+=("$target")
        printf '%s: FAILED (exit status %d); last lines of %s:\n' "$target" "$status" "$work/log" >&2
        tail -n 40 "$work/log" | cut -c1-300 >&2
        summary+=("$(printf '%-15s FAILED, see %s and fuzz/artifacts/%s/' "$target" "$work/log" "$target")")
    else
        summary+=("$(printf '%-15s seeds %-20s end %-20s %s runs' "$target" "${seeds:-?}" "${end:-?}" "$runs")")
    fi
done

printf '\n== fuzz summary (%d s per target, %d s in all)\n' "$seconds" "$((SECONDS - started_at))"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    die "crash, hang or out-of-memory in: ${failed[*]}"
fi
