#!/usr/bin/env bash
# Does a change leave the quickstart's result as it was? Runs recipes/quickstart.py at an earlier revision and
# on the working tree, both with the same pinned per-block latency table (measured latency is noisy and can
# change the block choice), then compares the synthesized images, block scores, dropped blocks, student weights
# and top-1, and writes benchmarks/results/quickstart_same_result.json. Resumable: a finished run is reused.
#
#   bash benchmarks/quickstart_same_result.sh 837c90d [WORK_DIR]     # ~25 min on 2 CPU cores
set -euo pipefail
REV=${1:?usage: quickstart_same_result.sh REVISION [WORK_DIR]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${2:-$ROOT/runs/quickstart_same_result}
PY=$ROOT/.venv/bin/python
OLD_TREE=$(dirname "$ROOT")/practise-df-$REV  # a sibling, so the recipe finds ../shared/data as in ROOT
mkdir -p "$WORK"
[ -d "$OLD_TREE" ] || git -C "$ROOT" worktree add -q "$OLD_TREE" "$REV"
W=$($PY -c "from practise_df.models import efficientnet_lite0_weights as w; print(w())")
[ -f "$WORK/lat.json" ] || $PY -m practise_df.cli latency --model timm:tf_efficientnet_lite0 --weights "$W" \
    --per-block --batch-size 8 --repeats 20 --output "$WORK/lat.json" > "$WORK/lat.log" 2>&1
run() {  # run NAME TREE: the quickstart of TREE's code (PYTHONPATH puts it before the editable install)
    [ -f "$WORK/$1/report.json" ] && return
    # the code that ran, recorded now: HEAD may move before the comparison is rerun
    echo "$(git -C "$2" rev-parse --short HEAD)$(git -C "$2" diff --quiet HEAD || echo ' + uncommitted changes')" \
        > "$WORK/$1.rev"
    (cd "$2" && PYTHONPATH="$2" /usr/bin/time -v "$PY" recipes/quickstart.py --block-latency "$WORK/lat.json" \
        --output-dir "$WORK/$1" --overwrite --json > "$WORK/$1.json" 2> "$WORK/$1.err")
}
run old "$OLD_TREE"
run new "$ROOT"
"$PY" - "$WORK" "$ROOT/benchmarks/results/quickstart_same_result.json" <<'PYEOF'
import hashlib, json, os, re, subprocess, sys
import torch
from safetensors.torch import load_file
work, out = sys.argv[1:]

def pngs(run):
    root = os.path.join(work, run, 'synth')
    return {os.path.relpath(os.path.join(r, f), root): hashlib.sha256(open(os.path.join(r, f), 'rb').read()).hexdigest()
            for r, _, fs in os.walk(root) for f in fs if f.endswith('.png')}

def summary(run):
    report = json.load(open(os.path.join(work, run, 'report.json')))
    wall = re.search(r'Elapsed \(wall clock\) time .*: (\S+)', open(os.path.join(work, f'{run}.err')).read())
    return {'revision': open(os.path.join(work, f'{run}.rev')).read().strip(),
            'dropped_blocks': report['dropped_blocks'], 'teacher_top1': report['eval']['teacher'].get('top1'),
            'student_top1': report['eval']['student'].get('top1'), 'agreement': report['eval']['student']['agreement'],
            'wall_clock': wall.group(1) if wall else None}

def scores(run):  # everything but the seconds each block took
    saved = json.load(open(os.path.join(work, run, 'scores.json')))
    return saved['selected'], [{k: v for k, v in s.items() if k != 'seconds'} for s in saved['scores']]

images = {run: pngs(run) for run in ('old', 'new')}
weights = {run: load_file(os.path.join(work, run, 'model', 'model.safetensors')) for run in ('old', 'new')}
result = {
    'old': summary('old'), 'new': summary('new'),
    'same_images': images['old'] == images['new'], 'images': len(images['new']),
    'same_scores': scores('old') == scores('new'),
    'same_weights': weights['old'].keys() == weights['new'].keys()
                    and all(torch.equal(weights['old'][k], weights['new'][k]) for k in weights['old']),
    'date': subprocess.run(['date', '-u'], capture_output=True, text=True).stdout.strip(),
}
with open(out, 'w') as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
PYEOF
