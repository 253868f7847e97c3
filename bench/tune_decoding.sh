#!/usr/bin/env bash
# Choose a model's decoding defaults on the validation split (never on test): BLEU for greedy search
# and for beam sizes x length penalties.   bench/tune_decoding.sh models/de-en
set -euo pipefail
model=$1
data=${2:-../shared/data/multi30k}
hyp=$(mktemp)
printf "beam\tlength_penalty\tvalidation BLEU\tchrF\n"
score() { mt evaluate --model "$model" --data "$data" --split validation --hyp "$hyp" "$@" | head -1 | awk '{print $3 "\t" $5}'; }
printf "1\t-\t%s\n" "$(score --decode.beam_size 1)"
for beam in 5 10; do
  for alpha in 0.6 1.0 1.4; do
    printf "%s\t%s\t%s\n" "$beam" "$alpha" "$(score --decode.beam_size "$beam" --decode.length_penalty "$alpha")"
  done
done
rm -f "$hyp"
