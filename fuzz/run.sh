#!/usr/bin/env bash
# Fuzzing gimmm with cargo-fuzz on the STABLE toolchain (see README.md).
#
#   fuzz/run.sh                      # every target, 600 s each, two at a time
#   fuzz/run.sh xmpp_reader 60       # one target, 60 s
#   fuzz/run.sh minimize             # merge the work corpora into fuzz/corpus/
#   fuzz/run.sh repro xmpp_reader fuzz/artifacts/xmpp_reader/crash-...
#
# Needs `cargo install cargo-fuzz`. Work corpora and logs live under
# fuzz/target/ (git-ignored); committed inputs: fuzz/seeds/<target> (hand-written)
# and fuzz/corpus/<target> (minimized with -merge=1, at most 200 small files).
set -euo pipefail
cd "$(dirname "$0")"

ALL=(xmpp_reader xmpp_negotiate bal_line fcm_json v1_translate v1_error ingress_body ingress_jwt)
# `--sanitizer none`: ASan needs `-Zsanitizer`, which stable rustc refuses
# (RUSTC_BOOTSTRAP=1 would allow it; gimmm forbids unsafe code, so ASan adds
# little). `-a`: debug assertions and overflow checks on.
FUZZ=(cargo fuzz run --sanitizer none -a)
LIMITS=(-rss_limit_mb=512 -timeout=5 -max_len=8192 -print_final_stats=1)

dict_for() {
  case "$1" in
    xmpp_*) echo dict/xmpp.dict ;;
    *) echo dict/json.dict ;;
  esac
}

build() { cargo fuzz build --sanitizer none -a "$@"; }

# libFuzzer exits on a corpus directory that does not exist: pass the
# hand-written seeds only for targets that have some.
seeds_of() { if [ -d "seeds/$1" ]; then echo "seeds/$1"; fi; }

run_one() {
  local t=$1 secs=$2
  local work=target/corpus-work/$t log=target/logs/$t.log
  mkdir -p "$work" target/logs "corpus/$t"
  echo "== $t for ${secs}s (log: fuzz/$log)"
  local rc=0
  # shellcheck disable=SC2046 # seeds_of prints nothing or one word.
  "${FUZZ[@]}" "$t" "$work" "corpus/$t" $(seeds_of "$t") -- -dict="$(dict_for "$t")" \
    -max_total_time="$secs" "${LIMITS[@]}" >"$log" 2>&1 || rc=$?
  # The summary: last status line plus libFuzzer's final stats.
  grep -E '^#[0-9]+ +(DONE|pulse)' "$log" | tail -1 | sed "s/^/$t: /" || true
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" | sed "s/^/$t: /" || true
  if [ $rc -ne 0 ]; then
    echo "$t: FAILED (rc=$rc); see fuzz/$log and fuzz/artifacts/$t/" >&2
    grep -E 'panicked|ERROR|SUMMARY' -A3 "$log" | head -20 >&2 || true
  fi
  return $rc
}

minimize() {
  for t in "${ALL[@]}"; do
    local work=target/corpus-work/$t
    [ -d "$work" ] || continue
    local tmp=target/corpus-min/$t
    rm -rf "$tmp" && mkdir -p "$tmp"
    # shellcheck disable=SC2046
    "${FUZZ[@]}" "$t" -- -merge=1 -max_len=4096 "$tmp" $(seeds_of "$t") "corpus/$t" "$work" >"target/logs/$t.merge.log" 2>&1
    rm -rf "corpus/$t" && mkdir -p "corpus/$t"
    # Keep the committed corpus small: at most 200 files, the smallest first.
    # Keep the committed corpus small: at most 200 files under 4 KiB, picked
    # evenly over the size range (not only the tiniest ones).
    find "$tmp" -type f -size -4k -printf '%s %p\n' | sort -n | cut -d' ' -f2- >"target/logs/$t.keep"
    local n step
    n=$(wc -l <"target/logs/$t.keep")
    step=$(((n + 199) / 200))
    [ "$step" -ge 1 ] || step=1
    awk -v s="$step" 'NR % s == 0' "target/logs/$t.keep" | while read -r f; do cp "$f" "corpus/$t/"; done
    echo "$t: $(find "corpus/$t" -type f | wc -l) files, $(cat "corpus/$t"/* | wc -c) bytes"
  done
}

case "${1:-all}" in
  minimize) build; minimize ;;
  repro)
    t=$2; f=$3
    "${FUZZ[@]}" "$t" "$f" ;;
  all)
    secs=${2:-600}
    build
    fail=0
    for ((i = 0; i < ${#ALL[@]}; i += 2)); do
      run_one "${ALL[i]}" "$secs" & p1=$!
      p2=
      if [ $((i + 1)) -lt ${#ALL[@]} ]; then run_one "${ALL[i + 1]}" "$secs" & p2=$!; fi
      wait $p1 || fail=1
      if [ -n "$p2" ]; then wait "$p2" || fail=1; fi
    done
    exit $fail ;;
  *)
    build "$1"
    run_one "$1" "${2:-600}" ;;
esac
