//! The examples each subcommand's `--help` ends with (clap `after_help`): real command lines,
//! the same as the README's.

pub const SCREEN: &str = "\
Examples:
  # one JSON line per image; folders are walked, DICOMDIRs followed
  scanside screen --bundle runs/bundle --public-key keys/site.pub image1.jpg scan.dcm holdout/

  # a CD's studies: one line per study after the image lines (--studies-only: those alone)
  scanside screen --bundle runs/bundle --public-key keys/site.pub --by-study /media/cdrom/DICOMDIR

  # the bundle's int8 model, as the microcontroller runs it
  scanside screen --engine int8 --bundle runs/bundle --public-key keys/site.pub image1.jpg
";

pub const BENCH: &str = "\
Examples:
  # every engine on real images (cold start, p50/p99, throughput, peak RSS)
  scanside bench --bundle runs/bundle --public-key keys/site.pub --engine fp32,tract,int8 images/

  # synthetic inputs, more timed runs
  scanside bench --bundle runs/bundle --public-key keys/site.pub --runs 1000
";

pub const INSPECT: &str = "\
Examples:
  # what the decoder read, and the windowed image as a 16-bit PNG to look at
  scanside inspect --png seen/ scan.dcm image1.jpg

  # a DICOM file's values before and after windowing, as raw f32
  scanside inspect --values raw/ scan.dcm
";

pub const MCU_VECTORS: &str = "\
Examples:
  # golden vectors for the firmware from a bundle exported with --targets onnx,mcu
  scanside mcu-vectors --bundle runs/bundle --public-key keys/site.pub --out golden/ image1.jpg image2.jpg
";

pub const WATCH: &str = "\
Examples:
  # screen every image that appears in incoming/ exactly once; SIGTERM finishes the current one
  scanside watch --in incoming/ --out results/ --bundle runs/bundle --public-key keys/site.pub

  # a batch: screen what is there, then exit (1 when any failed)
  scanside watch --in incoming/ --out results/ --bundle runs/bundle --public-key keys/site.pub --exit-when-idle
";

pub const RECEIVE: &str = "\
Examples:
  # a C-STORE receiver on port 11112 for the scanner's AE title only
  scanside receive --in incoming/ --out results/ --port 11112 --ae-title SCANSIDE \\
      --allow-calling-ae CT_SCANNER1 --bundle runs/bundle --public-key keys/site.pub

  # refuse instances the model is not for (C-STORE 0x0122) instead of reporting them
  scanside receive --in incoming/ --out results/ --refuse-not-applicable \\
      --bundle runs/bundle --public-key keys/site.pub
";

pub const SERVE: &str = "\
Examples:
  # the service from a configuration file (see runtime/deploy/scanside.toml)
  scanside serve --config /etc/scanside/scanside.toml
";

pub const COMPLETIONS: &str = "\
Examples:
  # bash, for this user
  scanside completions bash > ~/.local/share/bash-completion/completions/scanside

  # zsh
  scanside completions zsh > ~/.zfunc/_scanside
";

pub const MAN: &str = "\
Examples:
  # man pages for every command, then read one
  scanside man --out /usr/local/share/man/man1
";

pub const VALIDATE: &str = "\
Examples:
  # a site's labelled images (one folder per class), compared with the bundle's own evaluation
  scanside validate --bundle runs/bundle --public-key keys/site.pub --data site-images/ --html acceptance.html

  # a CSV with path,label,group (group: patient or lesion id), a stricter margin
  scanside validate --bundle runs/bundle --public-key keys/site.pub --data site/labels.csv --margin 0.02
";
