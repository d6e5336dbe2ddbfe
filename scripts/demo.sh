#!/usr/bin/env bash
# The demo: builds the tool, trains a new token on the bundled tiny model and images (under a
# minute on 2 CPU cores), generates with it, and shows the embedding tools on the bundled
# embedding files. Everything it writes goes to ./demo-output/.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup-libtorch.sh)"
if [[ -x target/release/textual-inversion ]]; then
  echo "[demo] building the tool (cargo build --release; up to date in seconds)" >&2
else
  echo "[demo] building the tool: the first build compiles torch-sys and about 300 crates (2-7 minutes on 2 cores)" >&2
fi
cargo build --release
ti=target/release/textual-inversion
out=demo-output
rm -rf "$out"; mkdir -p "$out"
run() { echo; echo "\$ textual-inversion $*"; "$ti" "$@"; }
run info
# Train <cat-toy> (2 vectors) on four photos of a toy, with a validation image at the end.
run train --pretrained_model_name_or_path fixtures/tiny-sd --train_data_dir fixtures/dataset/images \
  --placeholder_token '<cat-toy>' --initializer_token toy --num_vectors 2 --resolution 64 \
  --train_batch_size 2 --max_train_steps 100 --learning_rate 5e-3 --save_steps 50 --checkpointing_steps 50 \
  --validation_prompt 'a photo of a <cat-toy>' --validation_steps 100 --num_validation_images 1 \
  --seed 0 --output_dir "$out/cat-toy"
run inspect "$out/cat-toy/learned_embeds.safetensors"
run generate --pretrained_model_name_or_path fixtures/tiny-sd --embedding "$out/cat-toy" \
  --prompt 'a <cat-toy> on the beach' --num_inference_steps 20 --seed 42 --output_dir "$out/images"
# kohya/A1111 options: captions beside the images (tags shuffled and dropped each step), several
# starting words, min-SNR weighting, noise offset, clipping, and the web UI's .pt beside the
# diffusers file.
mkdir -p "$out/captioned"
cp fixtures/dataset/images/* "$out/captioned/"
captions=("a toy, [name], on a table, soft light" "[name], close-up, white background" "a small [name], wooden floor" "[name], outdoors, grass")
i=0
for f in "$out"/captioned/*; do echo "${captions[i % 4]}" > "${f%.*}.txt"; i=$((i + 1)); done
run train --pretrained_model_name_or_path fixtures/tiny-sd --train_data_dir "$out/captioned" \
  --placeholder_token '<my-toy>' --initializer_text 'red toy' --caption_extension .txt --shuffle_tags --tag_dropout 0.1 \
  --snr_gamma 5 --noise_offset 0.05 --max_grad_norm 1 --save_format a1111 --resolution 64 --train_batch_size 2 \
  --max_train_steps 30 --learning_rate 5e-3 --seed 0 --report_to none --output_dir "$out/my-toy"
run inspect "$out/my-toy/my-toy.pt"
# A single-file checkpoint in the original layout (a Lightning .ckpt, read without running its
# pickled objects): generate from it directly, and convert it to a diffusers folder.
run generate --pretrained_model_name_or_path fixtures/single-file/sd1.ckpt --config fixtures/single-file/sd1 \
  --prompt 'a photo of a cat' --height 32 --width 32 --num_inference_steps 4 --seed 42 --output_dir "$out/single-file"
run convert-model fixtures/single-file/sdxl.safetensors "$out/sdxl-folder" --config fixtures/single-file/sdxl
# The embedding tools on files written by PyTorch, the A1111 web UI layout, kohya and SDXL.
run inspect fixtures/embeddings/{diffusers.safetensors,diffusers_multi.bin,a1111.pt,kohya.safetensors,sdxl.safetensors,fp16.safetensors,legacy_format.bin,a1111_text.png,a1111_pixels.png}
run convert "$out/cat-toy/learned_embeds.safetensors" "$out/cat-toy.pt"
run convert --token '<renamed>' --dtype fp16 fixtures/embeddings/a1111.pt "$out/renamed.safetensors"
run inspect "$out/cat-toy.pt" "$out/renamed.safetensors"
echo
echo "A file that would run code is refused, and nothing runs:"
run inspect fixtures/embeddings/evil.pt || true
echo
echo "Outputs: $out/cat-toy (learned_embeds.safetensors, checkpoints, validation/, loss.png, logs/), $out/my-toy (also my-toy.pt), $out/images, $out/single-file, $out/sdxl-folder"
