//! DICOM Part 10 files read defensively before dicom-rs builds the data set: the file meta
//! group read leniently by hand (dicom-object 0.10 refuses over-long AE titles or version names
//! and missing optional elements, which pydicom and dcmtk read), a deflated body inflated under
//! a size cap, the body's VR encoding checked against the transfer syntax, and the whole data
//! set walked once, iteratively, so that nesting deeper than [`MAX_SEQUENCE_DEPTH`] or an element
//! longer than what is left of the file is refused before any recursion or allocation.
//! It never decodes pixels.

use std::io::Read;

use dicom_core::Tag;
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_object::meta::FileMetaTable;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

/// A DICOM Part 10 file in memory.
pub(super) type DicomFile = dicom_object::FileDicomObject<InMemDicomObject>;

/// The deepest nesting of sequences read (a sequence inside an item of a sequence … counts one
/// per sequence). Real objects nest a few levels (structured reports a few dozen); dicom-rs
/// builds the data set recursively, so a forged file with thousands of levels would overflow
/// the stack. Checked iteratively before dicom-rs reads the file.
pub const MAX_SEQUENCE_DEPTH: usize = 64;

/// The most bytes a deflated data set may inflate to (1 GiB): a deflate bomb is refused.
pub const MAX_INFLATED_BYTES: u64 = 1 << 30;

const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// How a data set is encoded on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Encoding {
    pub(super) explicit_vr: bool,
    pub(super) big_endian: bool,
}

impl Encoding {
    const IMPLICIT_LE: Self = Self {
        explicit_vr: false,
        big_endian: false,
    };

    fn of(transfer_syntax: &str) -> Self {
        Self {
            explicit_vr: transfer_syntax != IMPLICIT_VR_LITTLE_ENDIAN,
            big_endian: transfer_syntax == EXPLICIT_VR_BIG_ENDIAN,
        }
    }

    fn u16_at(self, b: &[u8], at: usize) -> Option<u16> {
        let x = [*b.get(at)?, *b.get(at + 1)?];
        Some(if self.big_endian {
            u16::from_be_bytes(x)
        } else {
            u16::from_le_bytes(x)
        })
    }

    fn u32_at(self, b: &[u8], at: usize) -> Option<u32> {
        let x = [
            *b.get(at)?,
            *b.get(at + 1)?,
            *b.get(at + 2)?,
            *b.get(at + 3)?,
        ];
        Some(if self.big_endian {
            u32::from_be_bytes(x)
        } else {
            u32::from_le_bytes(x)
        })
    }

    fn transfer_syntax_uid(self) -> &'static str {
        match (self.explicit_vr, self.big_endian) {
            (false, _) => IMPLICIT_VR_LITTLE_ENDIAN,
            (true, false) => EXPLICIT_VR_LITTLE_ENDIAN,
            (true, true) => EXPLICIT_VR_BIG_ENDIAN,
        }
    }
}

/// Reads a Part 10 file (128-byte preamble, `DICM`, meta group, data set). With `header_only`,
/// the data set stops before the Pixel Data (for identity look-ups).
pub(super) fn read_part10(bytes: &[u8], header_only: bool) -> Result<DicomFile, String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("no DICOM Part 10 header (128-byte preamble + DICM)".into());
    }
    let (mut meta, body_start) = read_meta(bytes)?;
    let declared = meta.transfer_syntax.clone();
    let inflated;
    let mut body = &bytes[body_start..];
    if declared == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        inflated = inflate(body)?;
        body = &inflated;
    }
    let encoding = body_encoding(&declared, body);
    if meta.transfer_syntax.is_empty() {
        meta.transfer_syntax = if encoding.explicit_vr {
            EXPLICIT_VR_LITTLE_ENDIAN.into()
        } else {
            IMPLICIT_VR_LITTLE_ENDIAN.into()
        };
    }
    let walked = walk(body, encoding, header_only)?;
    let ts = TransferSyntaxRegistry
        .get(encoding.transfer_syntax_uid())
        .ok_or("the transfer syntax registry lacks the native syntaxes")?;
    let readable = without(&body[..walked.end], &walked.unreadable);
    let obj = InMemDicomObject::read_dataset_with_ts(&readable[..], ts)
        .map_err(|e| format!("malformed DICOM data set: {e}"))?;
    Ok(obj.with_exact_meta(meta))
}

/// `body` without the byte ranges `skip` (copied only when there are any).
fn without<'a>(body: &'a [u8], skip: &[std::ops::Range<usize>]) -> std::borrow::Cow<'a, [u8]> {
    if skip.is_empty() {
        return std::borrow::Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut from = 0;
    for range in skip {
        out.extend_from_slice(&body[from..range.start]);
        from = range.end;
    }
    out.extend_from_slice(&body[from..]);
    std::borrow::Cow::Owned(out)
}

/// The file meta group (0002,xxxx), explicit VR little endian as PS3.10 requires (implicit VR
/// elements are read too), and where the data set starts. Over-long or missing optional
/// values are kept as they are: only the transfer syntax matters for decoding.
fn read_meta(bytes: &[u8]) -> Result<(FileMetaTable, usize), String> {
    let le = Encoding {
        explicit_vr: true,
        big_endian: false,
    };
    let mut meta = FileMetaTable {
        information_group_length: 0,
        information_version: [0, 1],
        media_storage_sop_class_uid: String::new(),
        media_storage_sop_instance_uid: String::new(),
        transfer_syntax: String::new(),
        implementation_class_uid: String::new(),
        implementation_version_name: None,
        source_application_entity_title: None,
        sending_application_entity_title: None,
        receiving_application_entity_title: None,
        private_information_creator_uid: None,
        private_information: None,
    };
    let mut at = 132;
    while le.u16_at(bytes, at) == Some(0x0002) {
        let element = le.u16_at(bytes, at + 2).unwrap_or(0);
        let explicit = bytes
            .get(at + 4..at + 6)
            .is_some_and(|vr| vr.iter().all(u8::is_ascii_uppercase));
        let (header, len) = match (explicit, bytes.get(at + 4..at + 6)) {
            (true, Some(vr)) if long_length_vr(vr) => (12, le.u32_at(bytes, at + 8)),
            (true, _) => (8, le.u16_at(bytes, at + 6).map(u32::from)),
            (false, _) => (8, le.u32_at(bytes, at + 4)),
        };
        let value = len
            .filter(|&l| l != UNDEFINED)
            .and_then(|l| bytes.get(at + header..at + header + l as usize))
            .ok_or_else(|| {
                format!("file meta element (0002,{element:04X}) runs past the end of the file")
            })?;
        set_meta_value(&mut meta, element, value);
        at += header + value.len();
    }
    if at == 132 {
        return Err("no file meta group after DICM".into());
    }
    Ok((meta, at))
}

fn set_meta_value(meta: &mut FileMetaTable, element: u16, value: &[u8]) {
    let text = || {
        String::from_utf8_lossy(value)
            .trim_end_matches(['\0', ' '])
            .trim_start()
            .to_string()
    };
    match element {
        0x0000 => meta.information_group_length = u32::from_le_bytes(pad4(value)),
        0x0001 if value.len() == 2 => meta.information_version = [value[0], value[1]],
        0x0002 => meta.media_storage_sop_class_uid = text(),
        0x0003 => meta.media_storage_sop_instance_uid = text(),
        0x0010 => meta.transfer_syntax = text(),
        0x0012 => meta.implementation_class_uid = text(),
        0x0013 => meta.implementation_version_name = Some(text()),
        0x0016 => meta.source_application_entity_title = Some(text()),
        0x0017 => meta.sending_application_entity_title = Some(text()),
        0x0018 => meta.receiving_application_entity_title = Some(text()),
        _ => {}
    }
}

fn pad4(b: &[u8]) -> [u8; 4] {
    let mut out = [0; 4];
    for (o, v) in out.iter_mut().zip(b) {
        *o = *v;
    }
    out
}

/// Explicit VRs whose length field is 4 bytes (after 2 reserved bytes), PS3.5 7.1.2.
fn long_length_vr(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// Inflates a deflated data set (raw deflate, PS3.5 A.5), refusing more than
/// [`MAX_INFLATED_BYTES`].
fn inflate(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(body)
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the deflated data set cannot be inflated: {e}"))?;
    if out.len() as u64 > MAX_INFLATED_BYTES {
        return Err(format!(
            "the deflated data set inflates to more than {MAX_INFLATED_BYTES} bytes"
        ));
    }
    Ok(out)
}

/// The encoding of the body: the transfer syntax's, except that a body whose first element has
/// no valid VR where one is declared (or one where none is) is read as it is written, as
/// pydicom does (some writers declare explicit VR over an implicit VR data set).
fn body_encoding(transfer_syntax: &str, body: &[u8]) -> Encoding {
    let declared = Encoding::of(transfer_syntax);
    if declared.big_endian {
        return declared;
    }
    let has_vr = body
        .get(4..6)
        .is_some_and(|vr| vr.iter().all(u8::is_ascii_uppercase));
    match (declared.explicit_vr, has_vr) {
        (true, false) if body.len() >= 8 => Encoding::IMPLICIT_LE,
        (false, true) => Encoding {
            explicit_vr: true,
            big_endian: false,
        },
        _ => declared,
    }
}

/// One open sequence or item while walking a data set.
struct Container {
    /// Where a defined-length container ends.
    end: Option<usize>,
    /// An item (else a sequence).
    item: bool,
    /// The fragments of encapsulated Pixel Data (items holding bytes, not data sets).
    fragments: bool,
    /// Contents encoded implicit VR little endian (a sequence with VR UN, PS3.5 6.2.2).
    implicit: bool,
    /// Where a VR UN sequence of undefined length starts, when it is to be left out.
    unknown_start: Option<usize>,
}

impl Container {
    fn new(end: Option<usize>, item: bool, implicit: bool) -> Self {
        Self {
            end,
            item,
            fragments: false,
            implicit,
            unknown_start: None,
        }
    }

    fn fragments(mut self) -> Self {
        self.fragments = true;
        self
    }
}

/// One element's header.
struct Header {
    tag: Tag,
    vr: [u8; 2],
    len: u32,
    size: usize,
}

/// What a walk over a data set found: where it ends, and the byte ranges of sequences with
/// VR UN and undefined length (implicit VR contents inside an explicit VR data set, PS3.5
/// 6.2.2), which dicom-rs cannot read and which are left out of what it is given.
struct Walked {
    end: usize,
    unreadable: Vec<std::ops::Range<usize>>,
}

/// Walks the data set without recursion, checking nesting depth and that every defined length
/// fits in what is left of its container and the file. The data set ends at the end of the
/// bytes, at trailing bytes too short for an element header, or at a top-level element with
/// no valid VR after the Pixel Data (trailing padding; pydicom reads such files too). With
/// `header_only`, it stops at the top-level Pixel Data.
fn walk(body: &[u8], encoding: Encoding, header_only: bool) -> Result<Walked, String> {
    let mut stack: Vec<Container> = Vec::new();
    let (mut at, mut seen_pixels) = (0, false);
    let mut unreadable = Vec::new();
    loop {
        while stack.last().is_some_and(|c| c.end == Some(at)) {
            stack.pop();
        }
        let limit = stack.iter().rev().find_map(|c| c.end).unwrap_or(body.len());
        if at > limit {
            return Err(format!(
                "an element at byte {at} runs past the end of its item"
            ));
        }
        let top_level = stack.is_empty();
        if at == body.len() && stack.iter().any(|c| c.implicit) {
            // dicom-rs would read the rest of an unclosed VR UN sequence as explicit VR, where a
            // few bytes of implicit-VR content can claim gigabytes (found by cargo-fuzz).
            return Err("the data set ends inside a sequence of VR UN (truncated file?)".into());
        }
        if at == body.len() || (top_level && body.len() - at < 8) {
            return Ok(Walked {
                end: at,
                unreadable,
            });
        }
        let implicit = stack.iter().any(|c| c.implicit);
        let here = if implicit {
            Encoding::IMPLICIT_LE
        } else {
            encoding
        };
        let h = header(body, at, here)?;
        // A VR dicom-rs does not know would be read with another header size than here.
        let valid_vr = !here.explicit_vr
            || h.tag.group() == 0xFFFE
            || dicom_core::VR::from_binary(h.vr).is_some();
        if top_level && ((header_only && is_pixel_data(h.tag)) || (seen_pixels && !valid_vr)) {
            return Ok(Walked {
                end: at,
                unreadable,
            });
        }
        if !valid_vr {
            return Err(format!(
                "element {} at byte {at} has no valid VR ({:?})",
                h.tag,
                String::from_utf8_lossy(&h.vr)
            ));
        }
        seen_pixels |= top_level && is_pixel_data(h.tag);
        let start = at;
        at += h.size;
        if h.tag.group() == 0xFFFE {
            let closed = delimiter(&mut stack, &h, &mut at, limit)?;
            if let Some(s) = closed.and_then(|c| c.unknown_start) {
                unreadable.push(s..at);
            }
            continue;
        }
        let undefined = h.len == UNDEFINED;
        if undefined && is_pixel_data(h.tag) && &h.vr != b"SQ" {
            stack.push(Container::new(None, false, implicit).fragments());
        } else if is_sequence(&h, here) {
            let depth = stack.iter().filter(|c| !c.item).count() + 1;
            if depth > MAX_SEQUENCE_DEPTH {
                return Err(format!(
                    "sequences nested {depth} deep at {}: deeper than the {MAX_SEQUENCE_DEPTH}-level limit",
                    h.tag
                ));
            }
            let end = fits(&h, at, limit)?;
            let unknown = undefined && &h.vr == b"UN" && !implicit;
            let mut sequence =
                Container::new((!undefined).then_some(end), false, implicit || unknown);
            // Left out only where no enclosing length would change.
            if unknown && stack.iter().all(|c| c.end.is_none()) {
                sequence.unknown_start = Some(start);
            }
            stack.push(sequence);
        } else {
            check_value_length(&h, here)?;
            at = fits(&h, at, limit)?;
        }
    }
}

/// A binary value whose length its VR's unit does not divide is refused: dicom-rs reads such a
/// value unit by unit, reads the next header out of step, and reserves whatever length that
/// header claims (1 GB for 2 kB, found by cargo-fuzz).
fn check_value_length(h: &Header, encoding: Encoding) -> Result<(), String> {
    use dicom_core::dictionary::{DataDictionary, VirtualVr};
    use dicom_core::VR;
    let vr = if encoding.explicit_vr {
        VR::from_binary(h.vr)
    } else {
        match StandardDataDictionary.by_tag(h.tag).map(|e| e.vr) {
            Some(VirtualVr::Exact(vr)) => Some(vr),
            _ => None,
        }
    };
    let unit = match vr {
        Some(VR::US | VR::SS | VR::OW) => 2,
        Some(VR::UL | VR::SL | VR::FL | VR::AT | VR::OL | VR::OF) => 4,
        Some(VR::FD | VR::SV | VR::UV | VR::OD | VR::OV) => 8,
        _ => 1,
    };
    if !(h.len as usize).is_multiple_of(unit) {
        let name = vr.map_or("?", |v| v.to_string());
        return Err(format!(
            "element {} (VR {name}) has {} bytes, not a whole number of {unit}-byte values",
            h.tag, h.len
        ));
    }
    Ok(())
}

fn is_pixel_data(tag: Tag) -> bool {
    tag == tags::PIXEL_DATA || tag == tags::FLOAT_PIXEL_DATA || tag == tags::DOUBLE_FLOAT_PIXEL_DATA
}

/// Whether an element opens a sequence: VR SQ, an undefined length, or (implicit VR) a tag
/// the dictionary knows as SQ.
fn is_sequence(h: &Header, encoding: Encoding) -> bool {
    use dicom_core::dictionary::DataDictionary;
    if h.len == UNDEFINED || &h.vr == b"SQ" {
        return true;
    }
    !encoding.explicit_vr
        && StandardDataDictionary.by_tag(h.tag).is_some_and(|e| {
            matches!(
                e.vr,
                dicom_core::dictionary::VirtualVr::Exact(dicom_core::VR::SQ)
            )
        })
}

/// Where a value of `h.len` bytes starting at `at` ends, when it fits before `limit`.
fn fits(h: &Header, at: usize, limit: usize) -> Result<usize, String> {
    if h.len == UNDEFINED {
        return Ok(at);
    }
    let end = at.saturating_add(h.len as usize);
    if end > limit {
        return Err(format!(
            "element {} claims {} bytes, but only {} remain (truncated file?)",
            h.tag,
            h.len,
            limit.saturating_sub(at)
        ));
    }
    Ok(end)
}

/// An item or a delimiter (group FFFE); returns the container a delimiter closed.
fn delimiter(
    stack: &mut Vec<Container>,
    h: &Header,
    at: &mut usize,
    limit: usize,
) -> Result<Option<Container>, String> {
    let top = stack.last();
    match h.tag.element() {
        0xE000 => match top {
            Some(c) if !c.item && c.fragments => *at = fits(h, *at, limit)?,
            Some(c) if !c.item => {
                let end = fits(h, *at, limit)?;
                let item = Container::new((h.len != UNDEFINED).then_some(end), true, c.implicit);
                stack.push(item);
            }
            // A stray item with a defined length (some writers leave one after an empty
            // sequence; dicom-rs and pydicom skip it): skipped.
            _ if h.len != UNDEFINED => *at = fits(h, *at, limit)?,
            _ => return Err(format!("an item outside a sequence at byte {}", *at - 8)),
        },
        0xE00D => match top {
            Some(c) if c.item && c.end.is_none() => return Ok(stack.pop()),
            _ => return Err("an item delimiter without an open item".into()),
        },
        0xE0DD => match top {
            Some(c) if !c.item && c.end.is_none() => return Ok(stack.pop()),
            // Some writers close defined-length sequences too: harmless, skipped.
            Some(c) if !c.item => {}
            _ => return Err("a sequence delimiter without an open sequence".into()),
        },
        other => return Err(format!("unknown delimiter (FFFE,{other:04X})")),
    }
    Ok(None)
}

/// The header of the element at `at`: tag, VR (explicit only), length and header size.
fn header(body: &[u8], at: usize, enc: Encoding) -> Result<Header, String> {
    let short = || format!("the data set ends inside an element header at byte {at}");
    let group = enc.u16_at(body, at).ok_or_else(short)?;
    let element = enc.u16_at(body, at + 2).ok_or_else(short)?;
    let tag = Tag(group, element);
    if group == 0xFFFE || !enc.explicit_vr {
        let len = enc.u32_at(body, at + 4).ok_or_else(short)?;
        return Ok(Header {
            tag,
            vr: *b"  ",
            len,
            size: 8,
        });
    }
    let vr = body.get(at + 4..at + 6).ok_or_else(short)?;
    let vr = [vr[0], vr[1]];
    if long_length_vr(&vr) {
        let len = enc.u32_at(body, at + 8).ok_or_else(short)?;
        Ok(Header {
            tag,
            vr,
            len,
            size: 12,
        })
    } else {
        let len = u32::from(enc.u16_at(body, at + 6).ok_or_else(short)?);
        Ok(Header {
            tag,
            vr,
            len,
            size: 8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit_le(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(vr);
        if long_length_vr(vr) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    const EXPLICIT: Encoding = Encoding {
        explicit_vr: true,
        big_endian: false,
    };

    /// `levels` sequences, each in the one item of the one above, with undefined lengths.
    fn nested(levels: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..levels {
            out.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0]);
            out.extend_from_slice(&UNDEFINED.to_le_bytes());
            out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            out.extend_from_slice(&UNDEFINED.to_le_bytes());
        }
        for _ in 0..levels {
            out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
        out
    }

    #[test]
    fn nesting_up_to_the_limit_is_walked_and_deeper_is_refused() {
        let ok = nested(MAX_SEQUENCE_DEPTH);
        assert_eq!(walk(&ok, EXPLICIT, false).map(|w| w.end), Ok(ok.len()));
        let e = walk(&nested(MAX_SEQUENCE_DEPTH + 1), EXPLICIT, false)
            .err()
            .unwrap();
        assert!(e.contains("nested 65 deep") && e.contains("limit"), "{e}");
    }

    #[test]
    fn an_unclosed_un_sequence_is_refused_not_read_as_explicit_vr() {
        // The cargo-fuzz artifact's shape: a VR UN sequence of undefined length whose
        // delimiters are missing; inside, implicit VR bytes that read as explicit VR claim an
        // OB value of gigabytes, which dicom-rs allocated before reading (2.6 GB).
        let mut body = vec![0x53, 0x44, 0x0C, 0x10, b'U', b'N', 0, 0];
        body.extend_from_slice(&UNDEFINED.to_le_bytes());
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        body.extend_from_slice(&UNDEFINED.to_le_bytes());
        body.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, 0x04, 0, 0, 0]);
        body.extend_from_slice(b"1.2\0");
        let e = walk(&body, EXPLICIT, false).err().unwrap();
        assert!(e.contains("ends inside a sequence of VR UN"), "{e}");
        // Closed, the same sequence is walked and left out for dicom-rs.
        body.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        body.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let walked = walk(&body, EXPLICIT, false).unwrap();
        assert_eq!(walked.unreadable, vec![0..body.len()]);
    }

    #[test]
    fn a_binary_value_of_a_length_its_vr_does_not_divide_is_refused() {
        // The cargo-fuzz artifact's element: 6 bytes of SL. dicom-rs read a header out of step
        // after it and reserved the gigabyte that header claimed.
        let mut body = explicit_le((0x0008, 0x0100), b"SL", &[0; 6]);
        body.extend(explicit_le((0x0010, 0x0010), b"PN", b"DOE^J "));
        let e = walk(&body, EXPLICIT, false).err().unwrap();
        assert!(e.contains("(0008,0100) (VR SL) has 6 bytes"), "{e}");
        let ok = explicit_le((0x0008, 0x0100), b"SL", &[0; 8]);
        assert!(walk(&ok, EXPLICIT, false).is_ok());
    }

    #[test]
    fn a_length_past_the_end_of_the_file_is_refused_before_reading_it() {
        let mut body = explicit_le((0x0010, 0x0010), b"PN", b"DOE^J ");
        body.extend(explicit_le((0x7FE0, 0x0010), b"OW", &[0; 16]));
        body.truncate(body.len() - 4);
        let e = walk(&body, EXPLICIT, false).err().unwrap();
        assert!(
            e.contains("(7FE0,0010) claims 16 bytes, but only 12 remain"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_vr_is_refused_before_dicom_rs_reads_it_with_another_length() {
        // Found by fuzzing: zero bytes mid-header made dicom-rs allocate and read for minutes.
        let mut body = explicit_le((0x0010, 0x0010), b"PN", b"DOE^J ");
        body.extend_from_slice(&[0; 16]);
        let e = walk(&body, EXPLICIT, false).err().unwrap();
        assert!(
            e.contains("(0000,0000)") && e.contains("no valid VR"),
            "{e}"
        );
        // After the pixel data, the same bytes are trailing padding: the data set ends there.
        let mut padded = explicit_le((0x7FE0, 0x0010), b"OB", &[1, 2]);
        padded.extend_from_slice(&[0; 16]);
        assert_eq!(walk(&padded, EXPLICIT, false).map(|w| w.end), Ok(14));
    }

    #[test]
    fn an_implicit_vr_body_under_an_explicit_transfer_syntax_is_detected() {
        let mut body = vec![0x08, 0x00, 0x16, 0x00, 4, 0, 0, 0];
        body.extend_from_slice(b"1.2\0");
        assert_eq!(
            body_encoding("1.2.840.10008.1.2.1", &body),
            Encoding::IMPLICIT_LE
        );
        let explicit = explicit_le((0x0008, 0x0016), b"UI", b"1.2\0");
        assert_eq!(body_encoding("1.2.840.10008.1.2.1", &explicit), EXPLICIT);
    }
}
