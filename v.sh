#!/bin/bash
cmd=${2:-validate}
out=$(timeout 60 /tmp/review_inputs/ml $cmd "$1" 2>&1); rc=$?
echo "== $1 [$cmd] rc=$rc"
if echo "$out" | grep -q Traceback; then echo "$out" | tail -${TL:-4}; else echo "$out" | head -${LINES_:-15}; fi
