//! The preprocessing contract (`PreprocessSpec`) and one image end to end.

use std::cell::RefCell;
use std::path::Path;

use crate::decode::{self, AlphaMode, DecodeOptions, Decoded, Hints, Rect, RgbImage};
use crate::error::{Error, Result};
use crate::geometry::{self, CropSpec, ResizeSpec};
use crate::normalize::{write_chw, Lut, NormalizeSpec, OutElem};
use crate::resize::{self, resize_source, Filter, PassOrder};

/// Default byte cap for one file: far above any real photo, far below memory.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// Everything that decides the output of one image.
#[derive(Debug, Clone)]
pub struct PreprocessSpec {
    pub resize: ResizeSpec,
    pub crop: Option<CropSpec>,
    pub filter: Filter,
    /// Which Pillow release's resize pass order to reproduce (the bytes depend on it).
    pub pass_order: PassOrder,
    pub normalize: NormalizeSpec,
    /// Colour (uint8, before normalisation) of padding added when the crop is larger than the image.
    pub pad_value: [u8; 3],
    pub decode: DecodeOptions,
    /// Fast mode: let libjpeg decode at 1/2, 1/4 or 1/8 scale when the resized image is that much smaller.
    pub jpeg_draft: bool,
    pub max_file_bytes: u64,
    lut: Lut,
}

impl PreprocessSpec {
    /// Build and validate a spec.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        resize: ResizeSpec,
        crop: Option<CropSpec>,
        filter: Filter,
        pass_order: PassOrder,
        normalize: NormalizeSpec,
        pad_value: [u8; 3],
        decode: DecodeOptions,
        jpeg_draft: bool,
        max_file_bytes: u64,
    ) -> Result<Self> {
        resize.validate()?;
        normalize.validate()?;
        if let Some(c) = crop {
            if c.height == 0 || c.width == 0 {
                return Err(Error::InvalidArgument(format!("crop size must be positive, got {}x{}", c.height, c.width)));
            }
        }
        if decode.max_pixels == 0 {
            return Err(Error::InvalidArgument("max_pixels must be positive".into()));
        }
        let lut = Lut::new(&normalize);
        Ok(Self { resize, crop, filter, pass_order, normalize, pad_value, decode, jpeg_draft, max_file_bytes, lut })
    }

    /// `(height, width)` of every output, or an error when it depends on the input.
    pub fn output_hw(&self) -> Result<(usize, usize)> {
        match (self.crop, self.resize) {
            (Some(c), _) => Ok((c.height as usize, c.width as usize)),
            (None, ResizeSpec::Exact { height, width }) => Ok((height as usize, width as usize)),
            _ => Err(Error::InvalidArgument(
                "this spec gives a different output size per image; add a crop size to batch it".into(),
            )),
        }
    }
}

/// One input item.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Path(&'a Path),
    Bytes(&'a [u8]),
    /// uint8 HWC pixels, C-contiguous, with 1 (gray), 3 (RGB) or 4 (RGBA) channels.
    Array { data: &'a [u8], height: usize, width: usize, channels: usize },
}

thread_local! {
    /// Per-thread scratch for the resized window, reused across images.
    static WINDOW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn array_to_rgb(data: &[u8], height: usize, width: usize, channels: usize, alpha: AlphaMode) -> Result<RgbImage> {
    Ok(array_part_to_rgb(data, height, width, channels, alpha, Rect::whole(width, height))?.image)
}

/// The rectangle `part` of a uint8 HWC array as RGB (the whole array is validated):
/// a decoded source that holds only the pixels its resize reads.
pub(crate) fn array_part_to_rgb(
    data: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    alpha: AlphaMode,
    part: Rect,
) -> Result<Decoded> {
    if height == 0 || width == 0 {
        return Err(Error::Shape(format!("array image has an empty side ({height}x{width})")));
    }
    if data.len() != height * width * channels {
        return Err(Error::Shape(format!("array of {} bytes is not {height}x{width}x{channels}", data.len())));
    }
    if !matches!(channels, 1 | 3 | 4) {
        return Err(Error::Shape(format!("array image must have 1, 3 or 4 channels, got {channels}")));
    }
    let part = if part.is_empty() || part.x1 > width || part.y1 > height { Rect::whole(width, height) } else { part };
    let row_bytes = (part.x1 - part.x0) * channels;
    let mut pixels = Vec::with_capacity((part.y1 - part.y0) * row_bytes);
    for y in part.y0..part.y1 {
        let start = (y * width + part.x0) * channels;
        pixels.extend_from_slice(&data[start..start + row_bytes]);
    }
    let rgb = match channels {
        3 => pixels,
        1 => pixels.iter().flat_map(|&g| [g, g, g]).collect(),
        _ => decode::rgba_to_rgb(&pixels, alpha),
    };
    let image = RgbImage { width: part.x1 - part.x0, height: part.y1 - part.y0, data: rgb };
    Ok(Decoded {
        image,
        placed: part,
        frame_width: width,
        frame_height: height,
        full_width: width,
        full_height: height,
        warnings: Vec::new(),
    })
}

/// Decode (or take) one source as the reference would see it, skipping (JPEG only) the
/// parts of the image that the resize and crop of `spec` never read.
pub fn load_rgb(source: &Source<'_>, spec: &PreprocessSpec) -> Result<Decoded> {
    let chooser = |w: usize, h: usize| -> u32 {
        let (rw, rh) = geometry::resized_size(w, h, &spec.resize);
        [8u32, 4, 2]
            .into_iter()
            .find(|&d| w.div_ceil(d as usize) >= rw && h.div_ceil(d as usize) >= rh)
            .unwrap_or(1)
    };
    let region = |(full_w, full_h): (usize, usize), (frame_w, frame_h): (usize, usize)| -> Rect {
        let layout = geometry::layout(full_w, full_h, &spec.resize, spec.crop.as_ref());
        resize::source_window(frame_w, frame_h, layout.resized_w, layout.resized_h, layout.x, layout.y, spec.filter)
            .unwrap_or(Rect::whole(frame_w, frame_h))
    };
    let hints = Hints {
        scale: if spec.jpeg_draft && spec.resize != ResizeSpec::None { Some(&chooser) } else { None },
        region: Some(&region),
    };
    match *source {
        Source::Path(p) => {
            let bytes = decode::read_file(p, spec.max_file_bytes)?;
            decode::decode(&bytes, &spec.decode, hints)
        }
        Source::Bytes(b) => decode::decode(b, &spec.decode, hints),
        Source::Array { data, height, width, channels } => {
            Ok(Decoded::whole(array_to_rgb(data, height, width, channels, spec.decode.alpha)?))
        }
    }
}

/// Preprocess one source into `out` (`3 * H * W` elements, CHW); returns the decoder's
/// warnings (recoverable damage, `Decoded::warnings`).
pub fn preprocess_one<T: OutElem>(source: &Source<'_>, spec: &PreprocessSpec, out: &mut [T]) -> Result<Vec<String>> {
    let decoded = load_rgb(source, spec)?;
    let layout = geometry::layout(decoded.full_width, decoded.full_height, &spec.resize, spec.crop.as_ref());
    if out.len() != 3 * layout.out_w * layout.out_h {
        return Err(Error::Shape(format!(
            "output slot holds {} values, image needs 3x{}x{}",
            out.len(),
            layout.out_h,
            layout.out_w
        )));
    }
    WINDOW.with(|w| -> Result<()> {
        let mut window = w.borrow_mut();
        let src = resize::Source {
            image: &decoded.image,
            placed: decoded.placed,
            frame_w: decoded.frame_width,
            frame_h: decoded.frame_height,
        };
        resize_source(
            src,
            layout.resized_w,
            layout.resized_h,
            layout.x,
            layout.y,
            spec.filter,
            spec.pass_order,
            &mut window,
        )?;
        write_chw(&window, &layout, spec.pad_value, &spec.lut, out);
        Ok(())
    })?;
    Ok(decoded.warnings)
}
