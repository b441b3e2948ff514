//! Decompression bombs keep one error type: a header that claims more pixels than the
//! limit is `too_large` (Python's `ImageTooLargeError`) in every format, whether our own
//! header check or the decoder's allocation limit catches it. The files are generated:
//! a valid header for the claimed size and (almost) no pixel data.

use ferroclip_core::decode::{decode, DecodeOptions, Hints};
use ferroclip_core::Error;

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn bmp(width: i32, height: i32, bpp: u16) -> Vec<u8> {
    let palette = if bpp <= 8 { 4u32 << bpp } else { 0 };
    let mut v = b"BM".to_vec();
    v.extend(0u32.to_le_bytes()); // file size (ignored by readers)
    v.extend(0u32.to_le_bytes());
    v.extend((54 + palette).to_le_bytes()); // pixel data offset
    v.extend(40u32.to_le_bytes()); // BITMAPINFOHEADER
    v.extend(width.to_le_bytes());
    v.extend(height.to_le_bytes());
    v.extend(1u16.to_le_bytes());
    v.extend(bpp.to_le_bytes());
    v.extend([0u8; 24]); // BI_RGB, sizes and palette counts zero
    if bpp <= 8 {
        v.extend(vec![0u8; 4 << bpp]); // the full palette the header implies
    }
    v.extend([0u8; 64]);
    v
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |v: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        v.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        v.extend(&body);
        v.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut v, b"IHDR", &ihdr);
    chunk(&mut v, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut v, b"IEND", &[]);
    v
}

fn gif(width: u16, height: u16) -> Vec<u8> {
    let mut v = b"GIF89a".to_vec();
    v.extend(width.to_le_bytes());
    v.extend(height.to_le_bytes());
    v.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]); // 2-entry global palette
    v.push(b',');
    v.extend([0, 0, 0, 0]);
    v.extend(width.to_le_bytes());
    v.extend(height.to_le_bytes());
    v.push(0);
    v.extend([2, 2, 0x4c, 0x01, 0, b';']);
    v
}

/// A lossless (VP8L) header: 14 bits each for width - 1 and height - 1, so at most 16384.
fn webp_vp8l(width: u32, height: u32) -> Vec<u8> {
    let bits = (width - 1) | ((height - 1) << 14);
    let mut chunk = b"VP8L".to_vec();
    chunk.extend(16u32.to_le_bytes());
    chunk.push(0x2f);
    chunk.extend(bits.to_le_bytes());
    chunk.extend([0u8; 11]);
    let mut v = b"RIFF".to_vec();
    v.extend((4 + chunk.len() as u32).to_le_bytes());
    v.extend(b"WEBP");
    v.extend(chunk);
    v
}

fn tiff(width: u32, height: u32) -> Vec<u8> {
    // Little-endian, one IFD at offset 8: an 8-bit RGB strip image with one strip.
    let entries: [(u16, u16, u32, u32); 9] = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 200),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ];
    let mut v = b"II*\0".to_vec();
    v.extend(8u32.to_le_bytes());
    v.extend((entries.len() as u16).to_le_bytes());
    for (tag, ty, count, value) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(ty.to_le_bytes());
        v.extend(count.to_le_bytes());
        if ty == 3 {
            v.extend((value as u16).to_le_bytes());
            v.extend([0, 0]);
        } else {
            v.extend(value.to_le_bytes());
        }
    }
    v.extend(0u32.to_le_bytes());
    v.resize(216, 0);
    v
}

fn jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8];
    // A quantisation table, then a baseline SOF0 for one 8-bit component.
    v.extend([0xFF, 0xDB, 0x00, 0x43, 0x00]);
    v.extend([1u8; 64]);
    v.extend([0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    v.extend(height.to_be_bytes());
    v.extend(width.to_be_bytes());
    v.extend([0x01, 0x01, 0x11, 0x00]);
    // Start of scan (libjpeg reads the header up to here), one byte of data, end.
    v.extend([0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x00]);
    v.extend([0xFF, 0xD9]);
    v
}

fn assert_too_large(name: &str, data: &[u8], opts: &DecodeOptions) {
    match decode(data, opts, Hints::default()) {
        Err(e) => assert_eq!(e.kind_name(), "too_large", "{name}: {e:?}"),
        Ok(d) => panic!("{name}: decoded {}x{} instead of refusing", d.image.width, d.image.height),
    }
}

/// Headers past the default limit (2x Pillow's MAX_IMAGE_PIXELS), in every format.
#[test]
fn huge_headers_are_too_large() {
    let opts = DecodeOptions::default();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bmp 24-bit 65535x65535", bmp(65535, 65535, 24)),
        ("bmp 32-bit top-down 40000x40000", bmp(40000, -40000, 32)),
        ("bmp 1-bit 2^31-1 wide", bmp(i32::MAX, 1, 1)),
        ("bmp 8-bit 20000x20000", bmp(20000, 20000, 8)),
        ("png 100000x100000", png(100_000, 100_000)),
        ("png 2^31-1 x 1 ... x 200", png(0x7FFF_FFFF, 200)),
        ("gif 65535x65535", gif(65535, 65535)),
        ("webp 16000x16000", webp_vp8l(16000, 16000)),
        ("tiff 100000x100000", tiff(100_000, 100_000)),
        ("jpeg 65535x65535", jpeg(65535, 65535)),
    ];
    for (name, data) in &cases {
        assert_too_large(name, data, &opts);
    }
}

/// The same under a small user limit: sizes that are ordinary images still refuse
/// with the one type once `max_pixels` is below them.
#[test]
fn user_pixel_limit_is_too_large() {
    let opts = DecodeOptions { max_pixels: 10_000, ..DecodeOptions::default() };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bmp", bmp(200, 200, 24)),
        ("png", png(200, 200)),
        ("gif", gif(200, 200)),
        ("webp", webp_vp8l(200, 200)),
        ("tiff", tiff(200, 200)),
        ("jpeg", jpeg(200, 200)),
    ];
    for (name, data) in &cases {
        assert_too_large(name, data, &opts);
    }
}

/// The decoder-limit variant itself maps to the same kind as the header check.
#[test]
fn decoder_limit_error_is_too_large() {
    assert_eq!(Error::DecoderLimit("x".into()).kind_name(), "too_large");
}
