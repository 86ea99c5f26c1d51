//! JPEG-LS decoding (ISO/IEC 14495-1 = ITU-T T.87), for the DICOM transfer syntaxes
//! 1.2.840.10008.1.2.4.80 (lossless) and 1.2.840.10008.1.2.4.81 (near-lossless): LOCO-I
//! prediction, context modelling, limited-length Golomb codes and run mode; 2–16 bits per
//! sample, 1–4 components, all three interleave modes, preset coding parameters (LSE id 1).
//!
//! Written here rather than taken from a crate: dicom-rs decodes JPEG-LS only through CharLS
//! (C++), which the static aarch64-musl edge binary cannot link, and the pure-Rust decoders on
//! crates.io come inside a second DICOM toolkit or a video-codec framework, each larger than
//! this file's job. Checked against CharLS (dcmtk's `dcmcjpls` encodes, the decoded pixels
//! must come back exactly or within NEAR) and against pydicom + libjpeg on the public corpus.
//! Names follow the standard (Ra, Rb, Rc, Rd, Q, A, B, C, N, Nn, RUNindex).

/// One decoded JPEG-LS image: `samples` pixel-interleaved (`components` per pixel), each in
/// `0..2^bits`.
#[derive(Debug)]
pub struct JlsImage {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Components per pixel (1 grey, 3 colour).
    pub components: usize,
    /// Bits per sample (P in the frame header).
    pub bits: u8,
    /// `height × width × components` samples.
    pub samples: Vec<u16>,
}

/// Why a JPEG-LS stream could not be decoded: a sentence naming the problem.
pub type JlsError = String;

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOF55: u8 = 0xF7;
const LSE: u8 = 0xF8;
const SOS: u8 = 0xDA;
const DRI: u8 = 0xDD;
const DNL: u8 = 0xDC;

/// Run lengths per RUNindex (ISO/IEC 14495-1, A.7.1.2).
const J: [u32; 32] = [
    0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 13,
    14, 15,
];

/// Decodes one JPEG-LS image (SOI … EOI). `max_samples` bounds the allocation a forged header
/// could ask for.
pub fn decode(data: &[u8], max_samples: usize) -> Result<JlsImage, JlsError> {
    let mut at = 0;
    let marker = |at: &mut usize| -> Result<u8, JlsError> {
        // Markers may be preceded by fill bytes (0xFF).
        if data.get(*at) != Some(&0xFF) {
            return Err(format!("JPEG-LS: expected a marker at byte {at}"));
        }
        while data.get(*at) == Some(&0xFF) {
            *at += 1;
        }
        let m = *data
            .get(*at)
            .ok_or_else(|| "JPEG-LS: stream ends inside a marker".to_string())?;
        *at += 1;
        Ok(m)
    };
    if marker(&mut at)? != SOI {
        return Err("JPEG-LS: no start-of-image marker".into());
    }
    let mut frame: Option<FrameHeader> = None;
    let mut preset = Preset::default();
    let mut planes: Vec<Vec<u16>> = Vec::new();
    let mut decoded = Vec::new();
    loop {
        if at >= data.len() {
            // A stream cut short can still decode every line from zero padding: without its
            // EOI it is refused, never filled in.
            return Err(
                "JPEG-LS: the stream ends before its end-of-image marker (truncated)".into(),
            );
        }
        let m = marker(&mut at)?;
        if m == EOI {
            break;
        }
        let segment = segment(data, at)?;
        at += 2 + segment.len();
        match m {
            SOF55 => {
                if frame.is_some() {
                    return Err("JPEG-LS: more than one frame header".into());
                }
                let f = FrameHeader::parse(segment)?;
                let size = f.width * f.height;
                if size == 0 {
                    return Err("JPEG-LS: zero-sized frame (a DNL marker is not supported)".into());
                }
                if size.saturating_mul(f.components) > max_samples {
                    return Err(format!(
                        "JPEG-LS: {}x{}x{} samples is more than the limit",
                        f.width, f.height, f.components
                    ));
                }
                planes = vec![vec![0; size]; f.components];
                decoded = vec![false; f.components];
                frame = Some(f);
            }
            LSE => preset.parse(segment)?,
            SOS => {
                let f = frame
                    .as_ref()
                    .ok_or("JPEG-LS: scan before the frame header")?;
                let scan = ScanHeader::parse(segment, f)?;
                let end = scan_end(data, at);
                let params = Parameters::new(f.bits, &preset, scan.near)?;
                decode_scan(&data[at..end], f, &scan, &params, &mut planes)?;
                for &c in &scan.components {
                    decoded[c] = true;
                }
                at = end;
            }
            DRI => {
                if segment.iter().any(|&b| b != 0) {
                    return Err("JPEG-LS: restart intervals are not supported".into());
                }
            }
            DNL => {
                return Err("JPEG-LS: a DNL marker (height after the scan) is not supported".into())
            }
            0xE0..=0xEF | 0xFE => {
                // APPn and comments. HP's colour transform (APP8 "mrfx") would change the
                // samples' meaning: refused rather than decoded wrongly.
                if m == 0xE8
                    && segment.starts_with(b"mrfx")
                    && segment.get(4).is_some_and(|&t| t != 0)
                {
                    return Err("JPEG-LS: the HP colour transform is not supported".into());
                }
            }
            other => return Err(format!("JPEG-LS: unexpected marker 0xFF{other:02X}")),
        }
    }
    let f = frame.ok_or("JPEG-LS: no frame header")?;
    if decoded.iter().any(|d| !d) {
        return Err("JPEG-LS: a component has no scan".into());
    }
    let pixels = f.width * f.height;
    let mut samples = vec![0_u16; pixels * f.components];
    for (c, plane) in planes.iter().enumerate() {
        for (i, &v) in plane.iter().enumerate() {
            samples[i * f.components + c] = v;
        }
    }
    Ok(JlsImage {
        width: f.width,
        height: f.height,
        components: f.components,
        bits: f.bits,
        samples,
    })
}

/// The bytes of the marker segment starting at `at` (after its 2-byte length).
fn segment(data: &[u8], at: usize) -> Result<&[u8], JlsError> {
    let len = match data.get(at..at + 2) {
        Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
        None => return Err("JPEG-LS: stream ends inside a marker segment".into()),
    };
    if len < 2 {
        return Err("JPEG-LS: marker segment shorter than its length field".into());
    }
    data.get(at + 2..at + len)
        .ok_or_else(|| "JPEG-LS: marker segment runs past the end of the stream".to_string())
}

/// Where the scan data starting at `at` ends: at the next marker (0xFF followed by a byte
/// with its top bit set; in scan data a 0xFF is followed by a stuffed 0 bit), or the end.
fn scan_end(data: &[u8], at: usize) -> usize {
    let mut i = at;
    while i + 1 < data.len() {
        if data[i] == 0xFF && data[i + 1] & 0x80 != 0 {
            return i;
        }
        i += 1;
    }
    data.len()
}

struct FrameHeader {
    bits: u8,
    width: usize,
    height: usize,
    components: usize,
    ids: Vec<u8>,
}

impl FrameHeader {
    fn parse(s: &[u8]) -> Result<Self, JlsError> {
        if s.len() < 6 {
            return Err("JPEG-LS: frame header too short".into());
        }
        let bits = s[0];
        let height = usize::from(u16::from_be_bytes([s[1], s[2]]));
        let width = usize::from(u16::from_be_bytes([s[3], s[4]]));
        let components = usize::from(s[5]);
        if !(2..=16).contains(&bits) {
            return Err(format!(
                "JPEG-LS: {bits} bits per sample (2 to 16 supported)"
            ));
        }
        if !(1..=4).contains(&components) || s.len() < 6 + 3 * components {
            return Err(format!(
                "JPEG-LS: {components} components (1 to 4 supported)"
            ));
        }
        let mut ids = Vec::with_capacity(components);
        for c in 0..components {
            let spec = &s[6 + 3 * c..9 + 3 * c];
            if spec[1] != 0x11 {
                return Err("JPEG-LS: subsampled components are not supported".into());
            }
            ids.push(spec[0]);
        }
        Ok(FrameHeader {
            bits,
            width,
            height,
            components,
            ids,
        })
    }
}

/// Preset coding parameters from an LSE segment (0: the default).
#[derive(Default)]
struct Preset {
    max_value: u16,
    t1: u16,
    t2: u16,
    t3: u16,
    reset: u16,
}

impl Preset {
    fn parse(&mut self, s: &[u8]) -> Result<(), JlsError> {
        match s.first() {
            Some(1) if s.len() >= 11 => {
                let at = |i: usize| u16::from_be_bytes([s[i], s[i + 1]]);
                *self = Preset {
                    max_value: at(1),
                    t1: at(3),
                    t2: at(5),
                    t3: at(7),
                    reset: at(9),
                };
                Ok(())
            }
            Some(1) => Err("JPEG-LS: preset parameters segment too short".into()),
            Some(id) => Err(format!(
                "JPEG-LS: LSE segment type {id} (mapping tables, oversize images) is not supported"
            )),
            None => Err("JPEG-LS: empty LSE segment".into()),
        }
    }
}

struct ScanHeader {
    /// Frame component indices this scan codes, in order.
    components: Vec<usize>,
    near: i32,
    interleave: u8,
}

impl ScanHeader {
    fn parse(s: &[u8], frame: &FrameHeader) -> Result<Self, JlsError> {
        let count = usize::from(*s.first().ok_or("JPEG-LS: empty scan header")?);
        if count == 0 || s.len() < 1 + 2 * count + 3 {
            return Err("JPEG-LS: scan header too short".into());
        }
        let mut components = Vec::with_capacity(count);
        for c in 0..count {
            let (id, table) = (s[1 + 2 * c], s[2 + 2 * c]);
            if table != 0 {
                return Err("JPEG-LS: mapping tables (palettes) are not supported".into());
            }
            let index =
                frame.ids.iter().position(|&i| i == id).ok_or_else(|| {
                    format!("JPEG-LS: scan names component {id}, not in the frame")
                })?;
            components.push(index);
        }
        let rest = &s[1 + 2 * count..];
        let (near, interleave, transform) = (i32::from(rest[0]), rest[1], rest[2]);
        if transform != 0 {
            return Err("JPEG-LS: point transform is not supported".into());
        }
        match (interleave, count) {
            (0, 1) | (1 | 2, _) => {}
            _ => {
                return Err(format!(
                    "JPEG-LS: interleave mode {interleave} with {count} components in a scan"
                ))
            }
        }
        Ok(ScanHeader {
            components,
            near,
            interleave,
        })
    }
}

/// The coding parameters of a scan (A.2.1, C.2.4.1.1).
struct Parameters {
    max_value: i32,
    near: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    reset: i32,
    range: i32,
    qbpp: u32,
    limit: u32,
}

impl Parameters {
    fn new(bits: u8, preset: &Preset, near: i32) -> Result<Self, JlsError> {
        let max_value = if preset.max_value == 0 {
            (1 << bits) - 1
        } else {
            i32::from(preset.max_value)
        };
        if max_value >= 1 << bits {
            return Err(format!(
                "JPEG-LS: MAXVAL {max_value} does not fit {bits} bits"
            ));
        }
        if near > (max_value / 2).min(255) {
            return Err(format!(
                "JPEG-LS: NEAR {near} is too large for MAXVAL {max_value}"
            ));
        }
        // Default thresholds (C.2.4.1.1.1).
        let clamp = |v: i32, lo: i32, hi: i32| if v > hi || v < lo { lo } else { v };
        let (t1, t2, t3) = if max_value >= 128 {
            let factor = (max_value.min(4095) + 128) / 256;
            // FACTOR·(BASIC_T − k) + k + c·NEAR with BASIC_T1..3 = 3, 7, 21.
            let t1 = clamp(factor + 2 + 3 * near, near + 1, max_value);
            let t2 = clamp(factor * (7 - 3) + 3 + 5 * near, t1, max_value);
            let t3 = clamp(factor * (21 - 4) + 4 + 7 * near, t2, max_value);
            (t1, t2, t3)
        } else {
            let factor = 256 / (max_value + 1);
            let t1 = clamp((3 / factor + 3 * near).max(2), near + 1, max_value);
            let t2 = clamp((7 / factor + 5 * near).max(3), t1, max_value);
            let t3 = clamp((21 / factor + 7 * near).max(4), t2, max_value);
            (t1, t2, t3)
        };
        let pick = |given: u16, default: i32| {
            if given == 0 {
                default
            } else {
                i32::from(given)
            }
        };
        let (t1, t2, t3) = (
            pick(preset.t1, t1),
            pick(preset.t2, t2),
            pick(preset.t3, t3),
        );
        let reset = pick(preset.reset, 64);
        if !(near < t1 && t1 <= t2 && t2 <= t3 && t3 <= max_value.max(1)) || reset < 3 {
            return Err("JPEG-LS: inconsistent preset thresholds".into());
        }
        let range = (max_value + 2 * near) / (2 * near + 1) + 1;
        let qbpp = ceil_log2(range);
        let bpp = ceil_log2(max_value + 1).max(2);
        let limit = 2 * (bpp + bpp.max(8));
        Ok(Parameters {
            max_value,
            near,
            t1,
            t2,
            t3,
            reset,
            range,
            qbpp,
            limit,
        })
    }

    fn quantize_gradient(&self, d: i32) -> i32 {
        if d <= -self.t3 {
            -4
        } else if d <= -self.t2 {
            -3
        } else if d <= -self.t1 {
            -2
        } else if d < -self.near {
            -1
        } else if d <= self.near {
            0
        } else if d < self.t1 {
            1
        } else if d < self.t2 {
            2
        } else if d < self.t3 {
            3
        } else {
            4
        }
    }

    /// `Px + Errval·(2·NEAR + 1)` reduced modulo the range and clamped (A.4.5 and its inverse).
    fn reconstruct(&self, predicted: i32, error: i32) -> i32 {
        let step = 2 * self.near + 1;
        let mut value = predicted + error * step;
        if value < -self.near {
            value += self.range * step;
        } else if value > self.max_value + self.near {
            value -= self.range * step;
        }
        value.clamp(0, self.max_value)
    }
}

fn ceil_log2(n: i32) -> u32 {
    let mut bits = 0;
    while (1_i64 << bits) < i64::from(n) {
        bits += 1;
    }
    bits
}

/// A regular-mode context (A.2.1: A, B, C, N).
#[derive(Clone, Copy)]
struct Context {
    a: i32,
    b: i32,
    c: i32,
    n: i32,
}

/// A run-interruption context (A.7.2: A, N, Nn; RItype 0 or 1).
#[derive(Clone, Copy)]
struct RunContext {
    a: i32,
    n: i32,
    nn: i32,
    run_type: i32,
}

/// Golomb parameter: the least k with `N·2^k ≥ A`.
fn golomb_k(n: i32, a: i32) -> Result<u32, JlsError> {
    let mut k = 0;
    while (i64::from(n) << k) < i64::from(a) {
        k += 1;
        if k > 24 {
            return Err("JPEG-LS: corrupt context (Golomb parameter out of range)".into());
        }
    }
    Ok(k)
}

/// Scan data bits, most significant first, with the marker stuffing of A.1: after a 0xFF byte
/// the next byte's top bit is a stuffed 0. Reading past the end gives zeros and is reported
/// by [`Bits::check_end`].
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
    buffer: u64,
    count: u32,
    after_ff: bool,
    padded: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            at: 0,
            buffer: 0,
            count: 0,
            after_ff: false,
            padded: 0,
        }
    }

    fn fill(&mut self) {
        while self.count <= 56 {
            let (value, width) = match self.data.get(self.at) {
                Some(&byte) => {
                    self.at += 1;
                    let bits = if self.after_ff {
                        (u64::from(byte & 0x7F), 7)
                    } else {
                        (u64::from(byte), 8)
                    };
                    self.after_ff = byte == 0xFF;
                    bits
                }
                None => {
                    self.padded += 8;
                    (0, 8)
                }
            };
            self.buffer |= value << (64 - self.count - width);
            self.count += width;
        }
    }

    fn read(&mut self, width: u32) -> u32 {
        if width == 0 {
            return 0;
        }
        if self.count < width {
            self.fill();
        }
        let value = (self.buffer >> (64 - width)) as u32;
        self.buffer <<= width;
        self.count -= width;
        value
    }

    fn bit(&mut self) -> bool {
        self.read(1) == 1
    }

    /// Zero bits before the next 1 (which is consumed), at most `max`.
    fn unary(&mut self, max: u32) -> Result<u32, JlsError> {
        let mut zeros = 0;
        loop {
            if self.count == 0 {
                self.fill();
            }
            let leading = (self.buffer.leading_zeros()).min(self.count);
            if leading < self.count {
                zeros += leading;
                // leading + 1 can be 64 (a 1 in the buffer's last bit): shifted out entirely.
                self.buffer = self.buffer.checked_shl(leading + 1).unwrap_or(0);
                self.count -= leading + 1;
                break;
            }
            zeros += self.count;
            self.buffer = 0;
            self.count = 0;
            if zeros > max {
                break;
            }
        }
        if zeros > max {
            return Err("JPEG-LS: corrupt scan data (Golomb code too long)".into());
        }
        Ok(zeros)
    }

    /// A limited-length Golomb code (A.5.3).
    fn golomb(&mut self, k: u32, limit: u32, qbpp: u32) -> Result<i32, JlsError> {
        // At least 1 for every valid parameter set (LIMIT ≥ 4·bpp > J + qbpp + 2); saturating
        // so no header can make it wrap.
        let escape = limit.saturating_sub(qbpp + 1);
        let high = self.unary(escape)?;
        let value = if high >= escape {
            self.read(qbpp) + 1
        } else {
            (high << k) | self.read(k)
        };
        // A mapped error is below 2·RANGE ≤ 2^(qbpp+1) in any valid stream; refusing larger
        // ones keeps every context update far from overflow on corrupt data.
        if value > 1 << (qbpp + 1) {
            return Err("JPEG-LS: corrupt scan data (error value out of range)".into());
        }
        Ok(value as i32)
    }

    fn check_end(&self) -> Result<(), JlsError> {
        // Bits still buffered that came from padding were never used; more padding than the
        // buffer holds means the decoder read past the data.
        if self.padded > self.count {
            return Err("JPEG-LS: scan data is truncated".into());
        }
        Ok(())
    }
}

/// Decoding state of one scan.
struct Scan<'p, 'd> {
    p: &'p Parameters,
    bits: Bits<'d>,
    contexts: [Context; 365],
    run_contexts: [RunContext; 2],
}

impl Scan<'_, '_> {
    /// One regular-mode sample (A.4–A.6) with context `q` (signed).
    fn regular(&mut self, q: i32, predicted: i32) -> Result<i32, JlsError> {
        let p = self.p;
        let sign = if q < 0 { -1 } else { 1 };
        let ctx = &mut self.contexts[q.unsigned_abs() as usize];
        let k = golomb_k(ctx.n, ctx.a)?;
        let px = (predicted + sign * ctx.c).clamp(0, p.max_value);
        let mapped = self.bits.golomb(k, p.limit, p.qbpp)?;
        // Inverse error mapping (A.5.2), with the special case for k = 0 in lossless mode.
        let mut error = if mapped & 1 == 0 {
            mapped >> 1
        } else {
            -((mapped + 1) >> 1)
        };
        if k == 0 && p.near == 0 && 2 * ctx.b + ctx.n - 1 < 0 {
            error = -error - 1;
        }
        // Context update (A.6).
        ctx.b += error * (2 * p.near + 1);
        ctx.a += error.abs();
        if ctx.n == p.reset {
            ctx.a >>= 1;
            ctx.b >>= 1;
            ctx.n >>= 1;
        }
        ctx.n += 1;
        if ctx.b <= -ctx.n {
            ctx.b += ctx.n;
            if ctx.c > -128 {
                ctx.c -= 1;
            }
            if ctx.b <= -ctx.n {
                ctx.b = -ctx.n + 1;
            }
        } else if ctx.b > 0 {
            ctx.b -= ctx.n;
            if ctx.c < 127 {
                ctx.c += 1;
            }
            if ctx.b > 0 {
                ctx.b = 0;
            }
        }
        Ok(p.reconstruct(px, sign * error))
    }

    /// The error of a run-interruption sample (A.7.2) in context `which` (RItype).
    fn interruption_error(&mut self, which: usize, run_index: usize) -> Result<i32, JlsError> {
        let p = self.p;
        let ctx = &mut self.run_contexts[which];
        let temp = ctx.a + (ctx.n >> 1) * ctx.run_type;
        let k = golomb_k(ctx.n, temp)?;
        let limit = p.limit - J[run_index] - 1;
        let mapped = self.bits.golomb(k, limit, p.qbpp)?;
        let t = mapped + ctx.run_type;
        let map = t & 1 == 1;
        let magnitude = (t + i32::from(map)) / 2;
        let error = if (k != 0 || 2 * ctx.nn >= ctx.n) == map {
            -magnitude
        } else {
            magnitude
        };
        if error < 0 {
            ctx.nn += 1;
        }
        ctx.a += (mapped + 1 - ctx.run_type) >> 1;
        if ctx.n == p.reset {
            ctx.a >>= 1;
            ctx.n >>= 1;
            ctx.nn >>= 1;
        }
        ctx.n += 1;
        Ok(error)
    }

    /// The length of a run of `ra` starting with `remaining` samples left in the line (A.7.1).
    fn run_length(&mut self, remaining: usize, run_index: &mut usize) -> Result<usize, JlsError> {
        let mut length = 0;
        while self.bits.bit() {
            let count = (1_usize << J[*run_index]).min(remaining - length);
            length += count;
            if count == 1 << J[*run_index] {
                *run_index = (*run_index + 1).min(31);
            }
            if length == remaining {
                return Ok(length);
            }
        }
        length += self.bits.read(J[*run_index]) as usize;
        if length > remaining {
            return Err("JPEG-LS: corrupt scan data (run past the end of the line)".into());
        }
        Ok(length)
    }

    /// One line of `c` interleaved components (c = 1 for the other modes). `previous` and
    /// `current` hold `width + 2` pixels each: one border pixel on either side.
    fn line(
        &mut self,
        previous: &[i32],
        current: &mut [i32],
        c: usize,
        width: usize,
        run_index: &mut usize,
    ) -> Result<(), JlsError> {
        let p = self.p;
        let mut x = 1;
        let mut q = [0_i32; 4];
        while x <= width {
            let mut all_zero = true;
            for k in 0..c {
                let ra = current[(x - 1) * c + k];
                let rc = previous[(x - 1) * c + k];
                let rb = previous[x * c + k];
                let rd = previous[(x + 1) * c + k];
                q[k] = 81 * p.quantize_gradient(rd - rb)
                    + 9 * p.quantize_gradient(rb - rc)
                    + p.quantize_gradient(rc - ra);
                all_zero &= q[k] == 0;
            }
            if !all_zero {
                for k in 0..c {
                    let ra = current[(x - 1) * c + k];
                    let rc = previous[(x - 1) * c + k];
                    let rb = previous[x * c + k];
                    let predicted = if rc >= ra.max(rb) {
                        ra.min(rb)
                    } else if rc <= ra.min(rb) {
                        ra.max(rb)
                    } else {
                        ra + rb - rc
                    };
                    // In a sample-interleaved scan a flat component (q = 0) next to one that
                    // is not is coded in regular mode too, with context 0 (as CharLS does).
                    current[x * c + k] = self.regular(q[k], predicted)?;
                }
                x += 1;
                continue;
            }
            // Run mode: copies of Ra, then possibly an interruption sample.
            let remaining = width + 1 - x;
            let run = self.run_length(remaining, run_index)?;
            for i in 0..run {
                for k in 0..c {
                    current[(x + i) * c + k] = current[(x - 1) * c + k];
                }
            }
            x += run;
            if run == remaining {
                break;
            }
            for k in 0..c {
                let ra = current[(x - 1) * c + k];
                let rb = previous[x * c + k];
                current[x * c + k] = if c == 1 && (ra - rb).abs() <= p.near {
                    let error = self.interruption_error(1, *run_index)?;
                    p.reconstruct(ra, error)
                } else {
                    let error = self.interruption_error(0, *run_index)?;
                    let sign = if rb < ra { -1 } else { 1 };
                    p.reconstruct(rb, error * sign)
                };
            }
            *run_index = run_index.saturating_sub(1);
            x += 1;
        }
        Ok(())
    }
}

/// Decodes one scan into the component planes it codes.
fn decode_scan(
    data: &[u8],
    frame: &FrameHeader,
    header: &ScanHeader,
    p: &Parameters,
    planes: &mut [Vec<u16>],
) -> Result<(), JlsError> {
    let initial_a = ((p.range + 32) / 64).max(2);
    let mut scan = Scan {
        p,
        bits: Bits::new(data),
        contexts: [Context {
            a: initial_a,
            b: 0,
            c: 0,
            n: 1,
        }; 365],
        run_contexts: [0, 1].map(|run_type| RunContext {
            a: initial_a,
            n: 1,
            nn: 0,
            run_type,
        }),
    };
    let (width, height) = (frame.width, frame.height);
    // Interleaved components share a line in sample mode; otherwise each component has its
    // own pair of lines and RUNindex (line mode codes them one line each in turn).
    let c = if header.interleave == 2 {
        header.components.len()
    } else {
        1
    };
    let groups = if header.interleave == 2 {
        1
    } else {
        header.components.len()
    };
    let stride = (width + 2) * c;
    let mut lines = vec![vec![0_i32; stride]; 2 * groups];
    let mut run_index = vec![0_usize; groups];
    for y in 0..height {
        for g in 0..groups {
            let (previous, current) = {
                let (a, b) = lines.split_at_mut(2 * g + 1);
                (&mut a[2 * g], &mut b[0])
            };
            // Current becomes previous: swap, then set the borders (A.2.1): the sample left
            // of the line is the first sample above it, the one right of the line above
            // repeats its last sample.
            core::mem::swap(previous, current);
            for k in 0..c {
                previous[(width + 1) * c + k] = previous[width * c + k];
                current[k] = previous[c + k];
            }
            scan.line(previous, current, c, width, &mut run_index[g])?;
            for k in 0..c {
                let component = if c > 1 {
                    header.components[k]
                } else {
                    header.components[g]
                };
                let plane = &mut planes[component];
                let row = &mut plane[y * width..(y + 1) * width];
                for (x, v) in row.iter_mut().enumerate() {
                    *v = current[(x + 1) * c + k] as u16;
                }
            }
        }
    }
    scan.bits.check_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_thresholds_match_the_standard() {
        // ISO/IEC 14495-1 C.2.4.1.1.1 (CharLS gives the same): 8-bit 3/7/21, 12-bit 18/67/276,
        // 16-bit lossless 18/67/276 (MAXVAL is capped at 4095 in FACTOR), NEAR adds 3/5/7·NEAR.
        let t = |bits, near| {
            let p = Parameters::new(bits, &Preset::default(), near).unwrap();
            (p.t1, p.t2, p.t3, p.reset, p.limit, p.qbpp)
        };
        assert_eq!(t(8, 0), (3, 7, 21, 64, 32, 8));
        assert_eq!(t(12, 0), (18, 67, 276, 64, 48, 12));
        assert_eq!(t(16, 0), (18, 67, 276, 64, 64, 16));
        assert_eq!(t(8, 2), (9, 17, 35, 64, 32, 6)); // RANGE 52
                                                     // Small MAXVAL: FACTOR = 256 / (MAXVAL + 1).
        assert_eq!(t(4, 0).0..=t(4, 0).2, 2..=4);
    }

    #[test]
    fn bits_skip_the_stuffed_zero_after_0xff() {
        // 0xFF then 0x7F: 8 ones, then the stuffed 0 is skipped, then 7 ones.
        let mut bits = Bits::new(&[0xFF, 0x7F, 0x80]);
        assert_eq!(bits.read(8), 0xFF);
        assert_eq!(bits.read(7), 0x7F);
        assert!(bits.bit());
        assert_eq!(bits.read(7), 0);
        assert!(bits.check_end().is_ok(), "every bit read so far was data");
        // Only padding is left: a code that never ends is an error, as is having read it.
        assert!(bits.unary(40).is_err());
        assert!(bits.check_end().is_err());
    }

    #[test]
    fn golomb_codes_decode_with_and_without_the_escape() {
        // k = 2: unary 3 (0001) + 2 bits 10 → (3 << 2) | 2 = 14. Escape (LIMIT − qbpp − 1 = 23
        // zeros for 8-bit): 23 zeros, 1, then qbpp = 8 bits of value − 1.
        let mut bits = Bits::new(&[0b0001_1000, 0, 0, 0b0000_0011, 0b0000_1010]);
        assert_eq!(bits.golomb(2, 32, 8).unwrap(), 14);
        let mut escaped = Bits::new(&[0, 0, 0b0000_0001, 41]);
        assert_eq!(escaped.golomb(0, 32, 8).unwrap(), 42);
        // A code no valid 8-bit stream has (a corrupt context's k = 20): refused, so the
        // context updates cannot overflow.
        let mut corrupt = Bits::new(&[0b0001_1111, 0xFF, 0xFF, 0xFF]);
        assert!(corrupt.golomb(20, 32, 8).is_err());
    }

    #[test]
    fn a_unary_code_ending_in_the_buffers_last_bit_does_not_overflow_the_shift() {
        // Found by fuzzing: 63 zeros then a 1 fill the 64-bit buffer exactly.
        let mut bits = Bits::new(&[0, 0, 0, 0, 0, 0, 0, 1, 0x80]);
        assert_eq!(bits.unary(100), Ok(63));
        assert!(bits.bit());
    }

    #[test]
    fn headers_it_cannot_decode_are_named() {
        let err = |data: &[u8]| decode(data, 1 << 20).unwrap_err();
        assert!(err(&[0x00, 0x01]).contains("marker"));
        assert!(err(&[0xFF, 0xD9]).contains("start-of-image"));
        // SOI, LSE type 2 (a mapping table).
        assert!(err(&[0xFF, 0xD8, 0xFF, 0xF8, 0x00, 0x03, 0x02]).contains("mapping tables"));
        // SOI, SOF55 declaring 64k × 64k: refused before any allocation.
        let huge = [
            0xFF, 0xD8, 0xFF, 0xF7, 0, 11, 8, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0,
        ];
        assert!(err(&huge).contains("more than the limit"));
        // A scan before the frame header.
        assert!(err(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 0, 0]).contains("before the frame"));
    }
}
