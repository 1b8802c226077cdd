# Shared by the bench/results_*.sh scripts (sourced, not run): the Python, the evaluation
# protocol of every results table (cached features: kNN k=20 at T=0.07 and k=200 at T=0.1,
# and the cached linear probe), and `evaluate DIR ARGS...`, which runs run_lincls.py unless
# DIR already holds its eval.json (finished work is never redone).
PY=${PY:-.venv/bin/python}
read -r -a EXTRA <<< "${EXTRA:-}"   # more key=value overrides for every run and evaluation
EVAL=(eval.mode=cached "eval.knn_ks=[20,200]" "eval.knn_ts=[0.07,0.1]" eval.embedding_samples=0)

evaluate() {  # evaluate DIR [run_lincls args...]
  local dir=$1; shift
  if [ -f "$dir/eval.json" ]; then echo "== $dir: done"; return; fi
  echo "== evaluate $dir"
  "$PY" run_lincls.py "$@" --set "${EVAL[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
}
