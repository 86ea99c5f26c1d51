//! The examples each subcommand's `--help` ends with (clap `after_help`): real command lines,
//! the same as the README's. `export`'s are in `export_args`.

pub const DATA_SPLIT: &str = "\
Examples:
  # grouped by lesion, stratified, seeded; records the data's place (relative to the split
  # file) and its content hash
  scanside-train data split --data ../shared/data/ham10000 --out runs/split.json --seed 0

  # a CSV manifest of your own, grouped by patient
  scanside-train data split --data labels.csv --path-column file --label-column finding \\
      --group-column patient --out runs/split.json
";

pub const DATA_CHECK: &str = "\
Examples:
  # unreadable files, leaks, label counts, MICLe bags, each partition beside the whole
  scanside-train data check --data ../shared/data/ham10000 --compare dx_type,sex,age_bucket

  # an existing split, the report also written as JSON; or printed as JSON
  scanside-train data check --split runs/split.json --report runs/check.json
  scanside-train data check --split runs/split.json --json
";

pub const DATA_PREVIEW: &str = "\
Examples:
  # the self-supervised views of 8 training images
  scanside-train data preview --split runs/split.json --preset derm --out runs/preview.png

  # the fine-tuning augmentations instead
  scanside-train data preview --split runs/split.json --preset cxr --finetune --out runs/ft.png
";

pub const DATA_BENCH: &str = "\
Examples:
  # decoding plus two augmented views, images per second on all cores
  scanside-train data bench --data ../shared/data/ham10000 --preset derm --size 64
";

pub const PRETRAIN: &str = "\
Examples:
  # MICLe (pairs from two images of one lesion), 10 epochs at 32 px
  scanside-train pretrain --split runs/split.json --out runs/pre --method micle --epochs 10 \\
      --image-size 32 --width 0.25

  # after a crash or kill: continue exactly from the last checkpoint
  scanside-train pretrain --resume --out runs/pre

  # ImageNet weights first, then domain SSL, with gradient accumulation
  scanside-train pretrain --split runs/split.json --out runs/pre-in --depth 50 --width 1 \\
      --stem imagenet --init resnet50-11ad3fa6.pth --image-size 128 --batch-size 256 --accumulate 4
";

pub const FINETUNE: &str = "\
Examples:
  # from the pretrained backbone on 10 % of the labels
  scanside-train finetune --split runs/split.json --pretrained runs/pre --out runs/ft \\
      --epochs 5 --label-fraction 0.1

  # quantisation-aware training continuing a run, before an int8 export
  scanside-train finetune --split runs/split.json --qat runs/ft --qat-calibration entropy \\
      --out runs/ft-qat --epochs 1 --lr 1e-4
";

pub const PROBE: &str = "\
Examples:
  # weighted 20-NN accuracy of the pretrained features, and the random-init baseline
  scanside-train probe --pretrained runs/pre
  scanside-train probe --pretrained runs/pre --random-init
";

pub const EVALUATE: &str = "\
Examples:
  # the test partition, intervals resampled by lesion/patient
  scanside-train evaluate --run runs/ft --partition test

  # a sub-population only
  scanside-train evaluate --run runs/ft --partition test --where dx_type=histo

  # another site's images (folder of class sub-folders, HAM10000 layout, CSV manifest...):
  # all scored, intervals by its groups, and the shift from the run's own test partition
  scanside-train evaluate --run runs/ft --data site-b/
";

pub const REPORT: &str = "\
Examples:
  # ROC, confusion matrix, reliability and training curves of two runs on one page
  scanside-train report runs/ft runs/ft-scratch --out runs/report
";

pub const STUDY_LABEL_EFFICIENCY: &str = "\
Examples:
  # pretraining × label fraction × seed, resumable
  scanside-train study label-efficiency --config tools/study/ham10000.toml --out runs/study-ham10000
";

pub const KEYGEN: &str = "\
Examples:
  # keys/site.key (secret, owner-only) and keys/site.pub (for the runtime's --public-key)
  scanside-train keygen --out keys/site
";

pub const DEMO: &str = "\
Examples:
  # the whole path on the shared HAM10000 data
  scanside-train demo --data ../shared/data/ham10000 --out runs/demo

  # bigger: 64 px, width 0.25, another seed
  scanside-train demo --data ../shared/data/ham10000 --out runs/demo64 --image-size 64 --width 0.25 --seed 1
";

pub const COMPLETIONS: &str = "\
Examples:
  # bash, for this user
  scanside-train completions bash > ~/.local/share/bash-completion/completions/scanside-train

  # fish
  scanside-train completions fish > ~/.config/fish/completions/scanside-train.fish
";

pub const MAN: &str = "\
Examples:
  # man pages for every command
  scanside-train man --out /usr/local/share/man/man1
";

pub const EXPORT_BACKBONE: &str = "\
Examples:
  # the SSL backbone for PyTorch (ImageNet stem, width 1: loads into torchvision.models.resnet18)
  scanside-train export-backbone --run runs/pre-in --out runs/pre-in/backbone.safetensors
";
