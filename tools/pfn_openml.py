r"""PFNClassifier vs scikit-learn baselines on the offline OpenML-CC18 tables.

  python tools/pfn_openml.py --weights tabular --splits 5 [--tables credit-g,diabetes]

Tables with <= 100 features and <= 10 classes (27 of the 30 in shared/data/openml_cc18).
Per table, 5 stratified random splits with min(1000, n/2) training rows and the rest as
test rows (TabPFN's protocol: <= 1000 training rows). Models: PFNClassifier (all training
rows as context, and with `subsample` = the context size it was trained on), logistic
regression (standardized, max_iter 2000), random forest (100 trees) and histogram gradient
boosting (sklearn defaults). Reports ROC-AUC (one-vs-rest macro for multi-class), accuracy and
fit+predict seconds per model, the per-table means, and the mean over tables with the mean
rank by ROC-AUC. Seconds are the median over splits, then the mean over tables (the
machine's load is not controlled: see BENCHMARKS.md for a side-by-side timing).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def _auc(y, p, classes):
  if len(classes) == 2:
    return roc_auc_score(y, p[:, 1])
  present = np.isin(classes, np.unique(y))
  p = p[:, present] / np.maximum(p[:, present].sum(1, keepdims=True), 1e-12)
  if present.sum() == 2:
    return roc_auc_score(y, p[:, 1])
  return roc_auc_score(y, p, multi_class="ovr", labels=classes[present])


def models(args, trained_context):
  from jaxdl.inference.pfn_sklearn import PFNClassifier
  out = {
      "pfn": lambda: PFNClassifier(args.weights, n_estimators=args.n_estimators),
      f"pfn_sub{trained_context}": lambda: PFNClassifier(
          args.weights, n_estimators=args.n_estimators, subsample=trained_context),
      "logreg": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
      "random_forest": lambda: RandomForestClassifier(n_jobs=1, random_state=0),
      "grad_boosting": lambda: HistGradientBoostingClassifier(random_state=0),
  }
  return {k: v for k, v in out.items() if not args.models or k in args.models.split(",")}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--weights", default="tabular")
  ap.add_argument("--splits", type=int, default=5)
  ap.add_argument("--n_estimators", type=int, default=8)
  ap.add_argument("--tables", default="")
  ap.add_argument("--models", default="")
  ap.add_argument("--data_dir", default=None)
  ap.add_argument("--json", default="")
  ap.add_argument("--max_minutes", type=float, default=0.0,
                  help="start no new table after this many minutes (0: no limit); the "
                       "summary covers the tables finished")
  args = ap.parse_args()

  from jaxdl import data as jdata
  from jaxdl.data import offline
  from jaxdl.inference.pfn_sklearn import load_pfn
  meta = load_pfn(args.weights).meta
  trained_context = int(meta.get("trained_max_context", meta["max_context"]))
  tables = args.tables.split(",") if args.tables else offline.openml_tables(args.data_dir)
  if not tables:
    raise SystemExit("error: no OpenML-CC18 tables found; pass --data_dir (the folder holding "
                     "openml_cc18/) or set JAXDL_DATA_DIR.")
  makers = models(args, trained_context)
  results = {}
  start = time.perf_counter()
  for table in tables:
    if args.max_minutes and time.perf_counter() - start > 60 * args.max_minutes:
      print(f"time limit: stopped before {table}; {len(results)} tables done", flush=True)
      break
    d = jdata.load("openml_cc18", "all", args.data_dir, table=table)
    x, y = d["inputs"].astype(np.float32), d["targets"]
    if x.shape[1] > 100 or len(np.unique(y)) > 10:
      print(f"skip {table}: {x.shape[1]} features, {len(np.unique(y))} classes")
      continue
    x = np.where(np.isnan(x), np.nanmean(x, 0), x)
    n_train = min(1000, len(y) // 2)
    sss = StratifiedShuffleSplit(args.splits, train_size=n_train, random_state=0)
    per = {m: {"auc": [], "acc": [], "seconds": []} for m in makers}
    for tr, te in sss.split(x, y):
      for name, make in makers.items():
        model = make()
        t0 = time.perf_counter()
        model.fit(x[tr], y[tr])
        p = model.predict_proba(x[te])
        sec = time.perf_counter() - t0
        classes = model.classes_
        per[name]["auc"].append(_auc(y[te], p, classes))
        per[name]["acc"].append(accuracy_score(y[te], classes[np.argmax(p, 1)]))
        per[name]["seconds"].append(sec)
    # Seconds: the median over splits (the first split of a table may include compiling
    # the PFN for a new padded shape); scores: the mean.
    results[table] = {m: {k: float(np.median(v) if k == "seconds" else np.mean(v))
                          for k, v in r.items()} for m, r in per.items()}
    print(table, {m: round(r["auc"], 4) for m, r in results[table].items()}, flush=True)

  names = list(makers)
  print(f"\n{args.splits} stratified splits, train rows min(1000, n/2), PFN weights "
        f"{args.weights!r} (trained context <= {trained_context}), {args.n_estimators} "
        "ensemble members.\n")
  print("| table | " + " | ".join(f"{n} AUC / acc" for n in names) + " |")
  print("|---" * (len(names) + 1) + "|")
  for t, r in results.items():
    print(f"| {t} | " + " | ".join(f"{r[n]['auc']:.3f} / {r[n]['acc']:.3f}" for n in names)
          + " |")
  aucs = np.array([[r[n]["auc"] for n in names] for r in results.values()])
  ranks = np.mean([np.argsort(np.argsort(-a)) + 1 for a in aucs], 0)
  print("| **mean** | " + " | ".join(
      f"{np.mean([r[n]['auc'] for r in results.values()]):.3f} / "
      f"{np.mean([r[n]['acc'] for r in results.values()]):.3f}" for n in names) + " |")
  print("| mean rank (AUC) | " + " | ".join(f"{x:.2f}" for x in ranks) + " |")
  print("| mean fit+predict s | " + " | ".join(
      f"{np.mean([r[n]['seconds'] for r in results.values()]):.3f}" for n in names) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
