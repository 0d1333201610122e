//! PaliGemma's detection answers: `<locYYYY>` groups with their labels, as boxes in the pixels
//! of the input image.

/// One box from PaliGemma's `detect` output, in pixels of the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub label: String,
    pub y_min: f32,
    pub x_min: f32,
    pub y_max: f32,
    pub x_max: f32,
}

/// Parses decoded detection text such as
/// `<loc0100><loc0200><loc0300><loc0400> cat ; <loc0010><loc0020><loc0500><loc0600> dog`.
/// Each `;`-separated entry starts with four `<locYYYY>` tokens (y_min, x_min, y_max, x_max on a
/// 0..1024 grid over the model's square input), scaled here by `height`/`width`; any `<segNNN>`
/// tokens (segmentation output) before the label are skipped. Entries that do not start with
/// four location tokens are ignored, so stray text never panics.
pub fn parse_detections(text: &str, width: u32, height: u32) -> Vec<Detection> {
    text.split(';')
        .filter_map(|entry| {
            let mut rest = entry.trim_start();
            let mut loc = [0.0f32; 4];
            for v in &mut loc {
                let (n, tail) = take_token(rest, "<loc", 4)?;
                *v = n as f32 / 1024.0;
                rest = tail;
            }
            while let Some((_, tail)) = take_token(rest, "<seg", 3) {
                rest = tail;
            }
            let (w, h) = (width as f32, height as f32);
            Some(Detection {
                label: rest.trim().to_string(),
                y_min: loc[0] * h,
                x_min: loc[1] * w,
                y_max: loc[2] * h,
                x_max: loc[3] * w,
            })
        })
        .collect()
}

/// Parses `{prefix}` + `digits` decimal digits + `>` at the start of `s`.
fn take_token<'a>(s: &'a str, prefix: &str, digits: usize) -> Option<(u32, &'a str)> {
    let rest = s.strip_prefix(prefix)?;
    let num = rest
        .get(..digits)
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))?;
    Some((num.parse().ok()?, rest[digits..].strip_prefix('>')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boxes_and_labels() {
        let d = parse_detections(
            "<loc0100><loc0200><loc0300><loc0400> cat ; <loc0000><loc0512><loc1023><loc1024>hot dog",
            2048,
            1024,
        );
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            Detection {
                label: "cat".into(),
                y_min: 100.0,
                x_min: 400.0,
                y_max: 300.0,
                x_max: 800.0
            }
        );
        assert_eq!(d[1].label, "hot dog");
        assert_eq!(
            (d[1].y_min, d[1].x_min, d[1].y_max, d[1].x_max),
            (0.0, 1024.0, 1023.0, 2048.0)
        );
    }

    #[test]
    fn skips_segmentation_tokens_and_junk() {
        let d = parse_detections(
            "<loc0010><loc0020><loc0030><loc0040><seg001><seg127> car; no box; <loc12><loc0001>; \
             <loc0001><loc0002><loc0003>",
            1024,
            1024,
        );
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].label, "car");
        assert_eq!(d[0].x_max, 40.0);
        assert!(parse_detections("", 10, 10).is_empty());
        assert!(parse_detections("<loc+001><loc0001><loc0001><loc0001>x", 10, 10).is_empty());
        assert!(parse_detections("<locé001>", 10, 10).is_empty());
    }

    #[test]
    fn empty_label_is_kept() {
        let d = parse_detections("<loc0000><loc0000><loc1024><loc1024>", 7, 5);
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].label.as_str(), d[0].y_max, d[0].x_max),
            ("", 5.0, 7.0)
        );
    }
}
