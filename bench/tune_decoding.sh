#!/usr/bin/env bash
# Choose a model's decoding defaults on the validation split (never on test): BLEU for greedy search
# and for beam sizes x length penalties.   bench/tune_decoding.sh models/de-en
set -euo pipefail
shopt -s inherit_errexit  # a failing command inside $(...) stops the script too
model=$1
data=${2:-../shared/data/multi30k}
hyp=$(mktemp)
printf "beam\tlength_penalty\tvalidation BLEU\tchrF\n"
# the report's first line, "BLEU <score> chrF <score> ...": a failed evaluation stops the script (set -e
# sees an assignment's status, not that of a command substitution among printf's arguments)
score() {
  local report
  report=$(mt evaluate --model "$model" --data "$data" --split validation --hyp "$hyp" "$@")
  awk 'NR == 1 {print $3 "\t" $5}' <<<"$report"
}
row=$(score --decode.beam_size 1)
printf "1\t-\t%s\n" "$row"
for beam in 5 10; do
  for alpha in 0.6 1.0 1.4; do
    row=$(score --decode.beam_size "$beam" --decode.length_penalty "$alpha")
    printf "%s\t%s\t%s\n" "$beam" "$alpha" "$row"
  done
done
rm -f "$hyp"
