//! Horizontal bar charts drawn as SVG by the server: no script, no chart library, readable in
//! both languages (labels are text the page's font shapes) and by screen readers (each chart has a
//! title and each bar its value as text).

use maud::{Markup, html};

/// One bar group: a label, and up to two values (a median and a 90th percentile, say) already
/// written as the page's language writes them.
pub struct Bar {
    pub label: String,
    pub values: [Option<(u64, String)>; 2],
}

const LABEL_WIDTH: u64 = 220;
const BAR_AREA: u64 = 360;
const ROW: u64 = 34;

/// A chart of `bars`, titled `title`; `legend` names the two values.
pub fn bars(id: &str, title: &str, legend: [&str; 2], bars: &[Bar]) -> Markup {
    let max = bars
        .iter()
        .flat_map(|b| b.values.iter().flatten().map(|(v, _)| *v))
        .max()
        .unwrap_or(0)
        .max(1);
    let height = ROW * bars.len() as u64 + 30;
    let width = LABEL_WIDTH + BAR_AREA + 120;
    let scale = |v: u64| (v * BAR_AREA / max).max(1);
    html! {
        svg.chart role="img" aria-labelledby=(format!("{id}-title")) xmlns="http://www.w3.org/2000/svg"
            viewBox=(format!("0 0 {width} {height}")) width=(width) height=(height) {
            title id=(format!("{id}-title")) { (title) }
            @for (i, bar) in bars.iter().enumerate() {
                @let y = i as u64 * ROW + 4;
                text x="0" y=(y + 18) { (bar.label) }
                @for (j, value) in bar.values.iter().enumerate() {
                    @if let Some((v, shown)) = value {
                        @let by = y + j as u64 * 13;
                        rect class=(if j == 0 { "bar" } else { "bar p90" }) x=(LABEL_WIDTH) y=(by)
                            width=(scale(*v)) height="12" {}
                        text x=(LABEL_WIDTH + scale(*v) + 6) y=(by + 11) { (shown) }
                    }
                }
            }
            @let ly = height - 8;
            rect class="bar" x=(LABEL_WIDTH) y=(ly - 10) width="12" height="12" {}
            text x=(LABEL_WIDTH + 18) y=(ly) { (legend[0]) }
            rect class="bar p90" x=(LABEL_WIDTH + 160) y=(ly - 10) width="12" height="12" {}
            text x=(LABEL_WIDTH + 178) y=(ly) { (legend[1]) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_value_and_say_their_values() {
        let chart = bars(
            "c",
            "Time to acknowledgement",
            ["median", "90%"],
            &[
                Bar {
                    label: "ngo-a".into(),
                    values: [Some((3_600, "1 h".into())), Some((7_200, "2 h".into()))],
                },
                Bar {
                    label: "ngo-b".into(),
                    values: [None, None],
                },
            ],
        )
        .into_string();
        assert!(
            chart.contains(r#"width="360""#),
            "the largest bar fills the area: {chart}"
        );
        assert!(
            chart.contains(r#"width="180""#),
            "half the largest is half as long"
        );
        assert!(chart.contains(">1 h<") && chart.contains(">2 h<"));
        assert!(chart.contains("<title id=\"c-title\">Time to acknowledgement</title>"));
    }
}
