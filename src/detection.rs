//! PaliGemma's detection answers: `<locYYYY>` groups with their labels, as boxes in the pixels
//! of the input image.

/// One object of PaliGemma's `detect` or `segment` answer, its box in pixels of the original
/// image (`y_min < y_max` and `x_min < x_max`: other boxes are skipped as malformed).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Detection {
    pub label: String,
    pub y_min: f32,
    pub x_min: f32,
    pub y_max: f32,
    pub x_max: f32,
    /// The 16 `<segNNN>` codes of a `segment` answer, in answer order (code k is row k / 4,
    /// column k % 4 of the decoder's 4 x 4 grid); see [`crate::segmentation`].
    pub codes: Option<[u32; 16]>,
}

impl Detection {
    /// (y_min, x_min, y_max, x_max).
    pub fn bounds(&self) -> (f32, f32, f32, f32) {
        (self.y_min, self.x_min, self.y_max, self.x_max)
    }
}

/// A parsed answer: its objects, and the malformed groups that were skipped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    pub detections: Vec<Detection>,
    /// How many malformed groups were skipped: `malformed.len()`.
    pub skipped: usize,
    /// What was wrong with each skipped group, in answer order.
    pub malformed: Vec<Malformed>,
}

impl Answer {
    fn skip(&mut self, why: Malformed) {
        self.skipped += 1;
        self.malformed.push(why);
    }

    /// The skipped groups counted by kind, e.g. `2 inverted or empty (y_max <= y_min or x_max
    /// <= x_min), 1 short (fewer than four <loc> tokens)` (empty when none was skipped).
    pub fn malformed_summary(&self) -> String {
        let kinds = [
            Malformed::ShortRun,
            Malformed::OffGrid,
            Malformed::Inverted,
            Malformed::BadCodes,
        ];
        kinds
            .iter()
            .filter_map(|&kind| {
                let n = self.malformed.iter().filter(|&&m| m == kind).count();
                (n > 0).then(|| format!("{n} {kind}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a group of an answer was skipped; displayed as an adjective of "group" (`short (fewer
/// than four <loc> tokens)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer than four `<loc>` tokens in a row: no box.
    ShortRun,
    /// A location past the 0..1024 grid (a box far outside the image).
    OffGrid,
    /// An inverted or empty box: y_max <= y_min or x_max <= x_min in token space.
    Inverted,
    /// `<seg>` codes that are not sixteen in the codebook's range (0..128): the box is kept,
    /// without a mask.
    BadCodes,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Malformed::ShortRun => "short (fewer than four <loc> tokens)",
            Malformed::OffGrid => "off the grid (a <loc> past 1024)",
            Malformed::Inverted => "inverted or empty (y_max <= y_min or x_max <= x_min)",
            Malformed::BadCodes => {
                "with bad <seg> codes (not sixteen in 0..128; box kept, no mask)"
            }
        })
    }
}

/// Whether a prompt asks for boxes: PaliGemma's `detect ...` and `segment ...` tasks.
pub fn answers_with_boxes(prompt: &str) -> bool {
    let p = prompt.trim_start();
    p.starts_with("detect ") || p.starts_with("segment ")
}

/// Parses decoded answer text such as
/// `<loc0100><loc0200><loc0300><loc0400> cat ; <loc0010><loc0020><loc0500><loc0600> dog`:
/// every group of four `<locYYYY>` tokens (y_min, x_min, y_max, x_max on a 0..1024 grid over
/// the model's square input, scaled here by `height` and `width`: the square was the whole
/// image, squashed), optionally 16 `<segNNN>` codes, then the label up to the next group or
/// `;`. Several objects and classes per answer; malformed groups ([`Malformed`]) are skipped
/// and counted, and no input panics.
pub fn parse_answer(text: &str, width: u32, height: u32) -> Answer {
    let (w, h) = (width as f32, height as f32);
    let mut answer = Answer::default();
    let mut rest = text;
    while let Some(i) = rest.find("<loc") {
        rest = &rest[i..];
        let mut loc = [0u32; 4];
        let mut n = 0;
        while n < 4 {
            let Some((v, tail)) = take_token(rest, "<loc", 4) else {
                break;
            };
            (loc[n], rest, n) = (v, tail, n + 1);
        }
        if n < 4 {
            answer.skip(Malformed::ShortRun);
            if n == 0 {
                rest = &rest["<loc".len()..];
            }
            continue;
        }
        if loc.iter().any(|&v| v > 1024) {
            answer.skip(Malformed::OffGrid);
            continue;
        }
        // The edges must be in order, strictly: a zero-height or zero-width box is no box.
        // big_vision's segmentation evaluator does the same (`t[2] > t[0] and t[3] > t[1]  #
        // Valid box`); transformers' PaliGemmaProcessor parses no boxes at all. The group's
        // codes and label are passed over with it (the search for the next `<loc` skips them).
        if loc[2] <= loc[0] || loc[3] <= loc[1] {
            answer.skip(Malformed::Inverted);
            continue;
        }
        let mut codes = Vec::new();
        while let Some((c, tail)) = take_token(rest.trim_start(), "<seg", 3) {
            codes.push(c);
            rest = tail;
        }
        let codes = match <[u32; 16]>::try_from(codes.as_slice()) {
            Ok(c) if c.iter().all(|&v| v < 128) => Some(c),
            _ if codes.is_empty() => None,
            _ => {
                answer.skip(Malformed::BadCodes);
                None
            }
        };
        let end = [rest.find(';'), rest.find("<loc")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(rest.len());
        let label = rest[..end].trim().to_string();
        rest = rest[end..].strip_prefix(';').unwrap_or(&rest[end..]);
        let scale = |v: u32, size: f32| v as f32 / 1024.0 * size;
        answer.detections.push(Detection {
            label,
            y_min: scale(loc[0], h),
            x_min: scale(loc[1], w),
            y_max: scale(loc[2], h),
            x_max: scale(loc[3], w),
            codes,
        });
    }
    answer
}

/// The objects of [`parse_answer`], malformed groups dropped.
pub fn parse_detections(text: &str, width: u32, height: u32) -> Vec<Detection> {
    parse_answer(text, width, height).detections
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
                x_max: 800.0,
                codes: None,
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

    #[test]
    fn segmentation_codes_and_several_objects_without_separators() {
        let segs: String = (0..16).map(|i| format!("<seg{:03}>", i * 8)).collect();
        let text = format!(
            "<loc0000><loc0100><loc0512><loc1023>{segs} cat <loc0010><loc0020><loc0030><loc0040> dog ; \
             <loc0001><loc0002><loc0003><loc0004><seg001><seg002> bird"
        );
        let a = parse_answer(&text, 1024, 512);
        assert_eq!(a.detections.len(), 3, "{a:?}");
        assert_eq!(a.detections[0].label, "cat");
        let codes = a.detections[0].codes.unwrap();
        assert_eq!((codes[0], codes[15]), (0, 120));
        assert_eq!(a.detections[0].y_max, 256.0);
        assert_eq!(
            (a.detections[1].label.as_str(), a.detections[1].codes),
            ("dog", None)
        );
        // Two codes are not a mask: the box stays, the codes are dropped and counted.
        assert_eq!(
            (a.detections[2].label.as_str(), a.detections[2].codes),
            ("bird", None)
        );
        assert_eq!(a.skipped, 1);
        // Codes outside the codebook, a short loc run, junk: skipped and counted.
        let bad: String = (0..16).map(|_| "<seg200>").collect();
        let a = parse_answer(
            &format!("<loc0001><loc0001><loc0002><loc0002>{bad} x; <loc0001> y"),
            10,
            10,
        );
        assert_eq!((a.detections.len(), a.skipped), (1, 2));
        assert_eq!(a.malformed, [Malformed::BadCodes, Malformed::ShortRun]);
        // A location off the grid would size a mask far beyond the image: skipped.
        let a = parse_answer(
            "<loc0000><loc0000><loc9999><loc9999> huge ; <loc0000><loc0000><loc1024><loc1024> all",
            10,
            10,
        );
        assert_eq!((a.detections.len(), a.skipped), (1, 1));
        assert_eq!(a.detections[0].label, "all");
        assert_eq!(a.malformed, [Malformed::OffGrid]);
    }

    #[test]
    fn inverted_boxes_are_skipped_and_counted() {
        // y_max < y_min.
        let a = parse_answer("<loc0700><loc0100><loc0650><loc0400> cat", 1024, 1024);
        assert_eq!((a.detections.len(), a.skipped), (0, 1), "{a:?}");
        assert_eq!(a.malformed, [Malformed::Inverted]);
        // x_max < x_min, with its codes and label passed over; the next group still parses.
        let segs: String = (0..16).map(|i| format!("<seg{i:03}>")).collect();
        let a = parse_answer(
            &format!(
                "<loc0100><loc0700><loc0650><loc0400>{segs} cat ; <loc0100><loc0100><loc0200><loc0200> dog"
            ),
            1024,
            1024,
        );
        assert_eq!((a.detections.len(), a.skipped), (1, 1), "{a:?}");
        assert_eq!(a.malformed, [Malformed::Inverted]);
        assert_eq!(
            (a.detections[0].label.as_str(), a.detections[0].y_max),
            ("dog", 200.0)
        );
        // Both inverted, and several such groups: each counted once.
        let a = parse_answer(
            "<loc0900><loc0900><loc0100><loc0100> a ; <loc0500><loc0600><loc0400><loc0700> b",
            10,
            10,
        );
        assert_eq!((a.detections.len(), a.skipped), (0, 2), "{a:?}");
        assert_eq!(
            a.malformed_summary(),
            "2 inverted or empty (y_max <= y_min or x_max <= x_min)"
        );
        let a = parse_answer(
            "<loc0900><loc0900><loc0100><loc0100> a ; <loc0001> b",
            10,
            10,
        );
        assert_eq!(
            a.malformed_summary(),
            "1 short (fewer than four <loc> tokens), 1 inverted or empty (y_max <= y_min or x_max \
             <= x_min)"
        );
        assert_eq!(parse_answer("", 10, 10).malformed_summary(), "");
    }

    #[test]
    fn boxes_with_equal_edges_are_empty_and_skipped() {
        // Zero height, zero width, a point: no area, skipped as big_vision's evaluator does.
        for text in [
            "<loc0300><loc0100><loc0300><loc0400> line",
            "<loc0100><loc0400><loc0300><loc0400> line",
            "<loc0300><loc0300><loc0300><loc0300> point",
        ] {
            let a = parse_answer(text, 1024, 1024);
            assert_eq!(
                (a.detections.len(), a.malformed.as_slice()),
                (0, &[Malformed::Inverted][..]),
                "{text}"
            );
        }
        // One token of height is a box.
        let a = parse_answer("<loc0300><loc0100><loc0301><loc0101> thin", 1024, 1024);
        assert_eq!((a.detections.len(), a.skipped), (1, 0));
        assert_eq!(a.detections[0].y_max - a.detections[0].y_min, 1.0);
    }
}
