# Shared by the bench/results_*.sh scripts (sourced, not run): the Python, the evaluation
# protocol of every results table (cached features: kNN k=20 at T=0.07 and k=200 at T=0.1,
# and the cached linear probe), `pretrain RUN CONFIG KEY=VALUE...` and `evaluate DIR ARGS...`,
# which skip a run whose eval.json exists (finished work is never redone).
PY=${PY:-.venv/bin/python}
read -r -a EXTRA <<< "${EXTRA:-}"   # more key=value overrides for every run and evaluation
EVAL=(eval.mode=cached "eval.knn_ks=[20,200]" "eval.knn_ts=[0.07,0.1]" eval.embedding_samples=0)

evaluate() {  # evaluate DIR [run_lincls args...]
  local dir=$1; shift
  if [ -f "$dir/eval.json" ]; then echo "== $dir: done"; return; fi
  echo "== evaluate $dir"
  "$PY" run_lincls.py "$@" --set "${EVAL[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
}

evaluate_in() {  # evaluate_in REGIME DIR [run_lincls args...]: evaluate on the
  # regime's data; the script defines regime_sets REGIME (its epochs key first, then data keys)
  local regime=$1 dir=$2; shift 2
  read -r -a data <<< "$(regime_sets "$regime")"
  local more=("${data[@]:1}")  # the regime's data keys (none for full)
  evaluate "$dir" "$@" ${more[@]+--set "${more[@]}"}
}

pretrain() {  # pretrain RUN CONFIG [key=value...]: train RUN unless evaluated; a killed run resumes
  local run=$1 cfg=$2 start=$SECONDS; shift 2
  if [ -f "$run/eval.json" ]; then return; fi
  echo "== pretrain $run"
  if [ -f "$run/checkpoints/last.pt" ]; then  # the run's own config.yaml; nothing else changes
    "$PY" run_pretrain.py --resume "$run" --set run.progress=false
  else
    "$PY" run_pretrain.py --config "$cfg" --overwrite --set run.output_dir="$run" \
      eval.knn_every=0 run.progress=false "$@" ${EXTRA[@]+"${EXTRA[@]}"}
  fi
  echo $((SECONDS - start)) > "$run/pretrain_seconds.txt"
}
