#!/usr/bin/env bash
# make demo: phantoms -> training -> int8 bundle -> scan, safe to run again.
# Each stage records a key of its inputs (its command, the key of the stage before it, the code that runs it)
# in DEMO/.STAGE.done when it finishes. Run again: a finished stage with the same key is reused (and says so);
# an unfinished training with the same key resumes (--resume); a changed key redoes the stage from scratch.
# The scan always runs (it skips films already stored). `make demo-clean` starts over.
# Usage: tools/demo.sh PYTHON DEMO_DIR [FILMS...]
set -euo pipefail
PY=$1; DEMO=$2; shift 2
mkdir -p "$DEMO"
key() { { printf '%s\n' "$@"; cat "${CODE[@]}"; } | sha256sum | cut -c1-16; }
done_key() { cat "$DEMO/.$1.done" 2>/dev/null || true; }
reused() { [[ "$(done_key "$1")" == "$2" ]] && echo "   reused: $1 finished earlier with the same inputs (make demo-clean to start over)"; }

t0=$SECONDS
echo "== 1/4 phantom films"
CODE=(train/phantoms.py train/phantom_draw.py convert/oddballs.py)
k1=$(key phantoms-120-0 field-6-1001 not-films-1-1)
if ! reused phantoms "$k1"; then
  rm -rf "$DEMO/phantoms" "$DEMO/field" "$DEMO/not-films" "$DEMO/.phantoms.done"
  "$PY" -m train.phantoms --out "$DEMO/phantoms" --patients 120 --seed 0
  "$PY" -m train.phantoms --out "$DEMO/field" --patients 6 --seed 1001 --quiet
  # a few pictures that are not chest films, so the scan shows the out-of-distribution guard refusing them
  shopt -s nullglob; field=("$DEMO"/field/images/*.png); shopt -u nullglob
  "$PY" -m convert.oddballs --out "$DEMO/not-films" --per-kind 1 --photos 1 --films "${field[@]:0:1}"
  echo "$k1" > "$DEMO/.phantoms.done"
fi
t1=$SECONDS

echo "== 2/4 training DenseNet-121 on the CPU"
CODE=(train/*.py edge/preprocess.py edge/films.py edge/decode.py edge/dicom.py)
k2=$(key "$k1" preset-demo)
if ! reused train "$k2"; then
  resume=()
  if [[ "$(cat "$DEMO/.train.started" 2>/dev/null || true)" == "$k2" && -f "$DEMO/run/last_state.pt" ]]; then
    echo "   resuming the unfinished training in $DEMO/run (make demo-clean to start over)"; resume=(--resume)
  else
    rm -rf "$DEMO/run"; echo "$k2" > "$DEMO/.train.started"
  fi
  "$PY" -m train --data "$DEMO/phantoms" --out "$DEMO/run" --preset demo "${resume[@]}"
  echo "$k2" > "$DEMO/.train.done"
fi
t2=$SECONDS

echo "== 3/4 converting to int8 TFLite"
CODE=(convert/*.py)
k3=$(key "$k2" calibration-64 0.05 0.2)
if ! reused convert "$k3"; then
  rm -f "$DEMO/.convert.done"
  "$PY" -m convert "$DEMO/run/best.safetensors" --data "$DEMO/phantoms" --out "$DEMO/bundle" --calibration 64 \
    --force --max-mean-dauroc 0.05 --max-dscore 0.2
  echo "$k3" > "$DEMO/.convert.done"
fi
t3=$SECONDS

echo "== 4/4 scanning films"
set +e
"$PY" -m edge.scan "$DEMO/field/images" "$DEMO/not-films" "$@" --bundle "$DEMO/bundle" --out "$DEMO/results"
status=$?
set -e
t4=$SECONDS
echo "demo stages (s): phantoms $((t1-t0)), train $((t2-t1)), convert $((t3-t2)), scan $((t4-t3)); total $((t4-t0))"
echo "Open the app: make serve, then http://127.0.0.1:8080/ in a browser on this machine"
echo "  (phones on the network: make serve SERVE_ARGS='--host 0.0.0.0'; it prints the access code)"
exit $status
