use super::*;
use crate::decode::RgbImage;
use crate::normalize::Rescale;

fn spec(hflip: f64, jitter: ColorJitter, grayscale: f64) -> AugmentSpec {
    AugmentSpec::new(
        CropParams::new((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)).unwrap(),
        hflip,
        jitter,
        grayscale,
        1234,
        Filter::Bicubic,
        PassOrder::Pillow12,
        NormalizeSpec { rescale: Rescale::None, mean_std: None },
        DecodeOptions::default(),
        1 << 30,
    )
    .unwrap()
}

fn noise_image(w: usize, h: usize, seed: u64) -> Vec<u8> {
    let mut rng = SampleRng::new(seed, 0, 0, Stream::CropBox);
    (0..w * h * 3).map(|_| rng.next_u64() as u8).collect()
}

fn key(index: u64) -> SampleKey {
    SampleKey { epoch: 3, index }
}

/// With every photometric op off and no normalisation, a sample is exactly
/// `resize_box` of the whole image over its crop box: the region-limited decode (here an
/// array slice) reads everything the taps need.
#[test]
fn a_sample_is_the_resize_of_its_box() {
    let s = spec(0.0, ColorJitter::default(), 0.0);
    for (w, h, ow, oh) in [(97, 61, 32, 32), (640, 480, 224, 224), (5, 300, 16, 24), (300, 5, 24, 16)] {
        let data = noise_image(w, h, (w * h) as u64);
        let image = RgbImage { width: w, height: h, data: data.clone() };
        let source = Source::Array { data: &data, height: h, width: w, channels: 3 };
        for i in 0..20 {
            let mut got = vec![0f32; 3 * ow * oh];
            augment_one(&source, &s, key(i), (oh, ow), &mut got).unwrap();
            let bx = s.crop_box(w, h, key(i));
            let mut want = Vec::new();
            resize_box(resize::Source::whole(&image), bx, ow, oh, s.filter, s.pass_order, &mut want).unwrap();
            for c in 0..3 {
                for p in 0..ow * oh {
                    assert_eq!(got[c * ow * oh + p], f32::from(want[p * 3 + c]), "{w}x{h} box {bx:?} channel {c}");
                }
            }
        }
    }
}

#[test]
fn output_does_not_depend_on_threads_or_batch_composition() {
    let s = spec(0.5, ColorJitter::from_strengths(0.4, 0.4, 0.4, 0.1).unwrap(), 0.2);
    let images: Vec<Vec<u8>> = (0..9).map(|i| noise_image(40 + i * 7, 30 + i * 5, i as u64)).collect();
    let sources: Vec<Source<'_>> = images
        .iter()
        .enumerate()
        .map(|(i, d)| Source::Array { data: d, height: 30 + i * 5, width: 40 + i * 7, channels: 3 })
        .collect();
    let keys: Vec<SampleKey> = (0..9).map(|i| key(100 + i)).collect();
    let per = 3 * 20 * 24;
    let run = |threads: usize| {
        let mut out = vec![0f32; 9 * per];
        assert!(augment_batch(&sources, &keys, &s, (20, 24), &mut out, Some(threads)).unwrap().errors.is_empty());
        out
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    let mut alone = vec![0f32; per];
    augment_batch(&sources[7..8], &keys[7..8], &s, (20, 24), &mut alone, Some(1)).unwrap();
    assert_eq!(&one[7 * per..8 * per], &alone[..]);
    // Another epoch draws other boxes.
    let other: Vec<SampleKey> = keys.iter().map(|k| SampleKey { epoch: 4, ..*k }).collect();
    let mut out = vec![0f32; 9 * per];
    augment_batch(&sources, &other, &s, (20, 24), &mut out, Some(2)).unwrap();
    assert_ne!(one, out);
}

#[test]
fn photometric_switches_leave_the_boxes_alone() {
    let plain = spec(0.0, ColorJitter::default(), 0.0);
    let busy = spec(0.5, ColorJitter::from_strengths(0.4, 0.4, 0.4, 0.1).unwrap(), 0.5);
    for i in 0..200 {
        let (a, b) = (plain.params(640, 480, key(i)), busy.params(640, 480, key(i)));
        assert_eq!(a.crop, b.crop);
        assert!(!a.flip && !a.grayscale && a.jitter.is_empty());
        assert_eq!(b.jitter.len(), 4);
    }
    let flips = (0..2000).filter(|&i| busy.params(64, 64, key(i)).flip).count();
    assert!((850..1150).contains(&flips), "{flips}");
}

#[test]
fn bad_items_fail_alone() {
    let s = spec(0.5, ColorJitter::default(), 0.0);
    let good = noise_image(50, 40, 1);
    let sources = [
        Source::Array { data: &good, height: 40, width: 50, channels: 3 },
        Source::Bytes(b"not an image"),
        Source::Array { data: &good[..10], height: 40, width: 50, channels: 3 },
        Source::Array { data: &good, height: 40, width: 50, channels: 3 },
    ];
    let keys: Vec<SampleKey> = (0..4).map(key).collect();
    let mut out = vec![1f32; 4 * 3 * 16 * 16];
    let errors = augment_batch(&sources, &keys, &s, (16, 16), &mut out, Some(2)).unwrap().errors;
    assert_eq!(errors.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2]);
    let per = 3 * 16 * 16;
    assert!(out[per..3 * per].iter().all(|&v| v == 0.0));
    assert!(out[..per].iter().any(|&v| v != 0.0));
    assert!(augment_batch(&sources, &keys[..3], &s, (16, 16), &mut out, None).is_err());
    assert!(augment_batch(&sources, &keys, &s, (0, 16), &mut out, None).is_err());
}

#[test]
fn jitter_strengths_resolve_like_torchvision() {
    let j = ColorJitter::from_strengths(0.4, 1.5, 0.0, 0.1).unwrap();
    assert_eq!(j.brightness, Some((0.6, 1.4)));
    assert_eq!(j.contrast, Some((0.0, 2.5)));
    assert_eq!(j.saturation, None);
    assert_eq!(j.hue, Some((-0.1, 0.1)));
    assert!(ColorJitter::from_strengths(-0.1, 0.0, 0.0, 0.0).is_err());
    assert!(ColorJitter::from_strengths(0.0, 0.0, 0.0, 0.6).is_err());
}
