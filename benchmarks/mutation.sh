#!/usr/bin/env bash
# Mutation testing of clrobust's core pure modules with mutmut 3 (slow: run by hand, not by CI).
#
#   benchmarks/mutation.sh                 # all four modules, one after the other
#   benchmarks/mutation.sh cka hooks       # some of them: cka, attacks, hooks, mapping
#   MUTMUT_CHILDREN=4 benchmarks/mutation.sh
#
# What is mutated and which tests run is the [mutmut] section of setup.cfg: clrobust/cka.py,
# clrobust/attacks.py, clrobust/hooks.py and clrobust/checkpoints/mapping.py, against
# tests/test_{cka,attacks,hooks,mapping}.py only (fast, in-process). mutmut copies the package
# into mutants/ (git-ignored) and keeps its results there, so a rerun only retests what changed;
# delete mutants/ to start afresh. Each module is run on its own, so a long run can stop between
# modules and be resumed. At the end it prints killed / total per module; a timeout counts as
# killed (the mutant hung: the tests noticed). `mutmut show NAME` prints one mutant's diff.
set -euo pipefail
cd "$(dirname "$0")/.."

children="${MUTMUT_CHILDREN:-2}"
declare -A module_of=([cka]=clrobust.cka [attacks]=clrobust.attacks [hooks]=clrobust.hooks
                      [mapping]=clrobust.checkpoints.mapping)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(cka attacks hooks mapping)

if [ -n "${VIRTUAL_ENV:-}" ]; then :; elif [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
command -v mutmut >/dev/null || { echo "mutmut is not installed: pip install 'mutmut>=3.8,<4'" >&2; exit 1; }

for name in "${names[@]}"; do
    module="${module_of[$name]:-}"
    [ -n "$module" ] || { echo "unknown module '$name'; use: ${!module_of[*]}" >&2; exit 2; }
    echo "== mutmut: $module"
    # The glob selects this module's mutants (and reruns them even when a result is cached).
    mutmut run --max-children "$children" "${module}.*"
done

mutmut results --all true > mutants/results.txt
python - mutants/results.txt <<'EOF'
"""killed / total per module from `mutmut results --all true`; survivors listed."""
import collections
import sys

counts = collections.defaultdict(collections.Counter)
survivors = []
for line in open(sys.argv[1]):
    if ": " not in line:
        continue
    name, status = line.strip().rsplit(": ", 1)
    module = name.split(".x_")[0].split(".xǁ")[0]
    counts[module][status] += 1
    if status not in ("killed", "timeout", "not checked"):
        survivors.append(f"{status:>10}  {name}")
total_killed = total = 0
for module, c in sorted(counts.items()):
    killed, n = c["killed"] + c["timeout"], sum(c.values()) - c["not checked"]
    if n == 0:
        continue  # not run (yet)
    total_killed, total = total_killed + killed, total + n
    detail = ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
    print(f"{module:32s} {killed:4d} / {n:4d} killed ({100 * killed / n:5.1f}%)   [{detail}]")
if total:
    print(f"{'all':32s} {total_killed:4d} / {total:4d} killed ({100 * total_killed / total:5.1f}%)")
print("\nnot killed:" if survivors else "\nevery mutant checked was killed")
print("\n".join(survivors))
EOF
