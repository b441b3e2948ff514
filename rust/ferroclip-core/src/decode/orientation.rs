//! Which orientation the reference applies: PIL's `ImageOps.exif_transpose` reads
//! `Image.getexif()`, whose rule is wider than "the EXIF chunk's IFD0 tag 0x0112":
//!
//! * the EXIF blob may carry any number of `Exif\0\0` prefixes (WebP files written by
//!   some tools keep the JPEG APP1 prefix inside their `EXIF` chunk), all stripped;
//! * a PNG without EXIF may hold it hex-encoded in ImageMagick's `Raw profile type exif`
//!   text chunk;
//! * when the EXIF has no orientation tag, the first `tiff:Orientation="N"` (or
//!   `tiff:Orientation>N`) in the XMP packet counts (PNG `XML:com.adobe.xmp` text, WebP
//!   `XMP ` chunk, JPEG APP1 `http://ns.adobe.com/xap/1.0/`, TIFF tag 700).
//!
//! image-rs follows only the first rule's simple case, so its orientation is overridden
//! with this module's for PNG, WebP and TIFF; the JPEG path reads its markers itself.

use image::metadata::Orientation;

/// The largest inflated text chunk read, as Pillow's `MAX_TEXT_CHUNK` (1 MiB).
const MAX_TEXT: u64 = 1 << 20;

/// PIL's rule: the EXIF tag if the EXIF has one, else XMP's. `None` = no transform.
pub(super) fn resolve(exif: Option<&[u8]>, xmp: Option<&[u8]>) -> Option<Orientation> {
    let value = exif.and_then(exif_tag).or_else(|| xmp.and_then(xmp_tag))?;
    match u8::try_from(value).ok().and_then(Orientation::from_exif) {
        Some(Orientation::NoTransforms) | None => None,
        some => some,
    }
}

/// The raw value of tag 0x0112 in IFD0 of a TIFF-structured EXIF blob, `None` when the
/// blob does not parse or has no such tag (PIL's `Orientation not in exif`).
fn exif_tag(mut exif: &[u8]) -> Option<u32> {
    while let Some(rest) = exif.strip_prefix(b"Exif\0\0") {
        exif = rest;
    }
    let big = match exif.get(..4)? {
        b"MM\0*" => true,
        b"II*\0" => false,
        _ => return None,
    };
    let u16_at = |o: usize| exif.get(o..o + 2).map(|b| if big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) });
    let u32_at = |o: usize| {
        exif.get(o..o + 4).map(|b| {
            let b = [b[0], b[1], b[2], b[3]];
            if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count).find_map(|i| {
        let entry = ifd.checked_add(2 + 12 * i)?;
        if u16_at(entry)? != 0x0112 {
            return None;
        }
        // SHORT as written by every camera; LONG tolerated; any other type counts as a
        // present tag with no valid orientation (PIL then transposes nothing).
        Some(match u16_at(entry + 2)? {
            3 => u32::from(u16_at(entry + 8)?),
            4 => u32_at(entry + 8)?,
            _ => 0,
        })
    })
}

/// The digit after the first `tiff:Orientation="` or `tiff:Orientation>` (PIL's regex
/// `tiff:Orientation(="|>)([0-9])`).
fn xmp_tag(xmp: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut from = 0;
    while let Some(at) = find(&xmp[from..], KEY) {
        let rest = &xmp[from + at + KEY.len()..];
        let digit = match rest {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(d),
            _ => None,
        };
        if let Some(d) = digit {
            return Some(u32::from(d - b'0'));
        }
        from += at + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The EXIF and XMP a PNG holds as PIL's `PngImageFile` sees them after `load()`: every
/// chunk up to `IEND` (text after the image data included), the last one of each kind
/// winning. EXIF: an `eXIf` chunk or a `tEXt` keyword `exif`, else the hex in a `Raw
/// profile type exif` text; XMP: a text chunk keyword `XML:com.adobe.xmp`.
pub(super) fn png_metadata(data: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let (mut exif, mut raw_profile, mut xmp) = (None, None, None);
    for (kind, body) in Chunks::png(data) {
        match kind {
            b"eXIf" => exif = Some(body.to_vec()),
            b"IEND" => break,
            b"tEXt" | b"zTXt" | b"iTXt" => {
                if let Some((keyword, text)) = png_text(kind, body) {
                    match keyword {
                        b"exif" if kind == b"tEXt" => exif = Some(text),
                        b"Raw profile type exif" => raw_profile = Some(text),
                        b"XML:com.adobe.xmp" => xmp = Some(text),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (exif.or_else(|| raw_profile.as_deref().and_then(raw_profile_exif)), xmp)
}

/// The `EXIF` and `XMP ` chunks of a WebP file, as slices of `data` (the first of each,
/// as libwebp's demuxer hands them to PIL). Read here rather than through image-webp, whose
/// metadata reader allocates a chunk's declared size before checking that the file holds
/// it (a 100-byte file declaring a 4 GiB EXIF chunk asked for 4 GiB: found by fuzzing).
pub(super) fn webp_metadata(data: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let (mut exif, mut xmp) = (None, None);
    for (kind, body) in Chunks::riff(data) {
        match kind {
            b"EXIF" if exif.is_none() => exif = Some(body),
            b"XMP " if xmp.is_none() => xmp = Some(body),
            _ => {}
        }
    }
    (exif, xmp)
}

/// The two chunk layouts walked here; they differ only in where the length sits, its byte
/// order and what follows the payload.
#[derive(Clone, Copy)]
enum Layout {
    /// PNG: big-endian length, tag, payload, 4-byte CRC (not checked).
    Png,
    /// RIFF (WebP): tag, little-endian length, payload, a pad byte after an odd length.
    Riff,
}

/// The `(tag, payload)` of each chunk, in file order, every payload a slice of the data.
/// The walk ends at the first chunk whose header or declared payload the data does not
/// hold, so a length is never trusted beyond the buffer (nor used to allocate). A trailer
/// (CRC, pad) cut off at the very end still lets its chunk's payload through.
struct Chunks<'a> {
    data: &'a [u8],
    pos: usize,
    layout: Layout,
}

impl<'a> Chunks<'a> {
    /// After the 8-byte PNG signature.
    fn png(data: &'a [u8]) -> Self {
        Self { data, pos: 8, layout: Layout::Png }
    }

    /// After the 12-byte `RIFF` size `WEBP` header.
    fn riff(data: &'a [u8]) -> Self {
        Self { data, pos: 12, layout: Layout::Riff }
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let head = self.data.get(self.pos..self.pos.checked_add(8)?)?;
        let (tag, len) = match self.layout {
            Layout::Png => (&head[4..], u32::from_be_bytes([head[0], head[1], head[2], head[3]])),
            Layout::Riff => (&head[..4], u32::from_le_bytes([head[4], head[5], head[6], head[7]])),
        };
        let len = usize::try_from(len).ok()?;
        let start = self.pos + 8;
        let body = self.data.get(start..start.checked_add(len)?)?;
        let trailer = match self.layout {
            Layout::Png => 4,
            Layout::Riff => len & 1,
        };
        // A trailer cut off by the end of the data leaves `pos` past it: the walk ends there.
        self.pos = start + len + trailer;
        Some((tag, body))
    }
}

/// A text chunk's keyword and (inflated) text; `None` for the keywords nobody reads here,
/// so only those chunks are ever inflated.
fn png_text<'a>(kind: &[u8], body: &'a [u8]) -> Option<(&'a [u8], Vec<u8>)> {
    let nul = body.iter().position(|&b| b == 0)?;
    let (keyword, rest) = (&body[..nul], &body[nul + 1..]);
    if !matches!(keyword, b"exif" | b"Raw profile type exif" | b"XML:com.adobe.xmp") {
        return None;
    }
    match kind {
        b"tEXt" => Some((keyword, rest.to_vec())),
        // Compression method byte 0 (zlib), then the stream.
        b"zTXt" => Some((keyword, inflate(rest.strip_prefix(&[0])?)?)),
        _ => {
            // iTXt: compression flag, method, language NUL, translated keyword NUL, text.
            let (&flag, rest) = rest.split_first()?;
            let (&method, rest) = rest.split_first()?;
            let lang = rest.iter().position(|&b| b == 0)?;
            let rest = &rest[lang + 1..];
            let translated = rest.iter().position(|&b| b == 0)?;
            let text = &rest[translated + 1..];
            match (flag, method) {
                (0, _) => Some((keyword, text.to_vec())),
                (_, 0) => Some((keyword, inflate(text)?)),
                _ => None,
            }
        }
    }
}

fn inflate(stream: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(stream).take(MAX_TEXT + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= MAX_TEXT).then_some(out)
}

/// ImageMagick's hex dump (`\nexif\n  <length>\n<hex lines>`): PIL joins the lines after the
/// third and reads them as hex (`bytes.fromhex`, which also skips spaces).
fn raw_profile_exif(text: &[u8]) -> Option<Vec<u8>> {
    let hex: Vec<u8> = text
        .split(|&b| b == b'\n')
        .skip(3)
        .flatten()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    hex.chunks(2)
        .map(|p| {
            let digit = |c: u8| char::from(c).to_digit(16);
            Some((digit(p[0])? * 16 + digit(p[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian TIFF header + IFD0 with one entry `tag` of `kind` holding `value`.
    fn exif(tag: u16, kind: u16, value: u16) -> Vec<u8> {
        let mut v = b"II*\0".to_vec();
        v.extend(8u32.to_le_bytes());
        v.extend(1u16.to_le_bytes());
        v.extend(tag.to_le_bytes());
        v.extend(kind.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        v.extend(u32::from(value).to_le_bytes());
        v
    }

    #[test]
    fn exif_prefixes_are_stripped_and_the_tag_read() {
        let plain = exif(0x0112, 3, 6);
        assert_eq!(exif_tag(&plain), Some(6));
        let prefixed = [b"Exif\0\0Exif\0\0".as_slice(), &plain].concat();
        assert_eq!(resolve(Some(&prefixed), None), Some(Orientation::Rotate90));
        assert_eq!(exif_tag(&exif(0x0110, 3, 6)), None);
        assert_eq!(exif_tag(b"II*\0\xff\xff\xff\xff"), None);
        assert_eq!(exif_tag(b""), None);
    }

    #[test]
    fn xmp_counts_only_when_the_exif_has_no_tag() {
        let xmp = br#"<x:xmpmeta><rdf:Description tiff:Orientation="3"/></x:xmpmeta>"#;
        assert_eq!(resolve(None, Some(xmp)), Some(Orientation::Rotate180));
        assert_eq!(resolve(Some(&exif(0x0110, 3, 1)), Some(xmp)), Some(Orientation::Rotate180));
        // A present tag, even 1, wins over XMP.
        assert_eq!(resolve(Some(&exif(0x0112, 3, 1)), Some(xmp)), None);
        assert_eq!(xmp_tag(b"<tiff:Orientation>8</tiff:Orientation>"), Some(8));
        assert_eq!(xmp_tag(b"tiff:Orientation='6' tiff:Orientation=\"5\""), Some(5));
        assert_eq!(xmp_tag(b"tiff:Orientation"), None);
        assert_eq!(resolve(None, Some(b"tiff:Orientation=\"9\"")), None);
    }

    fn chunk(kind: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        v.extend(kind);
        v.extend(body);
        v.extend([0; 4]); // CRC: not checked here
        v
    }

    #[test]
    fn webp_chunks_are_bounded_by_the_file() {
        let chunk = |kind: &[u8], body: &[u8]| {
            let mut v = kind.to_vec();
            v.extend(u32::try_from(body.len()).unwrap().to_le_bytes());
            v.extend(body);
            if body.len() % 2 == 1 {
                v.push(0);
            }
            v
        };
        let head = b"RIFF\0\0\0\0WEBP".to_vec();
        let file = [head.clone(), chunk(b"VP8X", &[0; 10]), chunk(b"XMP ", b"abc"), chunk(b"EXIF", b"Exif\0\0")].concat();
        assert_eq!(webp_metadata(&file), (Some(b"Exif\0\0".as_slice()), Some(b"abc".as_slice())));
        // A chunk declaring more than the file holds ends the walk; nothing is allocated.
        let mut bomb = [head, chunk(b"VP8X", &[0; 10])].concat();
        bomb.extend(b"EXIF\xfc\xff\xff\xffExif");
        assert_eq!(webp_metadata(&bomb), (None, None));
    }

    #[test]
    fn chunk_walk_stops_at_the_first_length_the_data_does_not_hold() {
        const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
        // A whole chunk, then one whose CRC the data cuts off (its payload still counts).
        let png = [SIG, &chunk(b"abcd", b"xy"), b"\0\0\0\x01efghz"].concat();
        let walked: Vec<_> = Chunks::png(&png).collect();
        assert_eq!(walked, [(b"abcd".as_slice(), b"xy".as_slice()), (b"efgh".as_slice(), b"z".as_slice())]);
        // A length past the end (u32::MAX here) ends the walk for good.
        let bad = [SIG, &chunk(b"abcd", b""), b"\xff\xff\xff\xffIDATabc"].concat();
        let mut it = Chunks::png(&bad);
        assert_eq!(it.next(), Some((b"abcd".as_slice(), b"".as_slice())));
        assert_eq!((it.next(), it.next()), (None, None));
        // RIFF: the tag first, then a little-endian length; an odd payload's pad byte is skipped.
        let riff = [b"RIFF\0\0\0\0WEBP".as_slice(), b"ABCD\x01\0\0\0x\0", b"EFGH\0\0\0\0"].concat();
        let walked: Vec<_> = Chunks::riff(&riff).collect();
        assert_eq!(walked, [(b"ABCD".as_slice(), b"x".as_slice()), (b"EFGH".as_slice(), b"".as_slice())]);
    }

    #[test]
    fn png_raw_profile_and_compressed_xmp() {
        use std::io::Write;
        let blob = exif(0x0112, 3, 8);
        let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
        let (a, b) = hex.split_at(10);
        let raw = format!("\nexif\n      {}\n{a}\n{b}\n", blob.len());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(br#"tiff:Orientation="2""#).unwrap();
        let xmp = [b"XML:com.adobe.xmp\0\x01\x00\0\0".as_slice(), &z.finish().unwrap()].concat();
        let png = [
            b"\x89PNG\r\n\x1a\n".as_slice(),
            &chunk(b"tEXt", &[b"Raw profile type exif\0".as_slice(), raw.as_bytes()].concat()),
            &chunk(b"IDAT", b""),
            &chunk(b"iTXt", &xmp),
            &chunk(b"IEND", b""),
        ]
        .concat();
        let (e, x) = png_metadata(&png);
        assert_eq!(e.as_deref(), Some(blob.as_slice()));
        assert_eq!(x.as_deref(), Some(br#"tiff:Orientation="2""#.as_slice()));
        assert_eq!(resolve(e.as_deref(), x.as_deref()), Some(Orientation::Rotate270));
        // Truncated chunk lengths end the walk instead of reading past the data.
        assert_eq!(png_metadata(&png[..20]), (None, None));
    }
}
