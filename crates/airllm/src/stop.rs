//! Stop strings in streamed text: a reader must never see a stop string, not even
//! its first characters before the model has finished writing it.

/// Passes streamed text pieces through, holding back any tail that could be the
/// start of a stop string and cutting the text before the first stop string.
///
/// ```
/// use airllm::stop::StopStream;
/// let mut s = StopStream::new(&["\nUser:".to_string()]);
/// let mut shown = String::new();
/// for piece in ["Hello", " there\nUs", "er: hi"] {
///     shown += &s.push(piece);
/// }
/// shown += &s.finish();
/// assert_eq!(shown, "Hello there");
/// assert!(s.stopped());
/// ```
#[derive(Clone, Debug, Default)]
pub struct StopStream {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl StopStream {
    /// A stream that cuts at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopStream {
        StopStream { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// Whether a stop string has been seen (later pieces are dropped).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The text so far, cut before the stop string once one was seen.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Add a piece; returns the text that can be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        // Only the new text and a stop string's length before it can hold a new match.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(piece);
        if let Some(pos) = self.stops.iter().filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from)).min()
        {
            self.text.truncate(pos);
            self.stopped = true;
            return self.take(pos);
        }
        let hold = self.held_back();
        self.take(self.text.len() - hold)
    }

    /// Everything not yet shown (call when generation ends).
    pub fn finish(&mut self) -> String {
        self.take(self.text.len())
    }

    /// Length of the longest tail of the text that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let mut best = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if k > best && self.text.ends_with(&s[..k]) {
                    best = k;
                }
            }
        }
        best
    }

    fn take(&mut self, end: usize) -> String {
        let mut end = end.max(self.emitted);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let out = self.text[self.emitted.min(end)..end].to_owned();
        self.emitted = self.emitted.max(end);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut s = StopStream::new(&stops);
        let mut out: Vec<String> = pieces.iter().map(|p| s.push(p)).collect();
        out.push(s.finish());
        (out, s.stopped())
    }

    #[test]
    fn a_stop_string_split_over_pieces_never_shows() {
        let (out, stopped) = run(&["END"], &["abc E", "N", "D more"]);
        assert_eq!(out, ["abc ", "", "", ""]);
        assert!(stopped);
    }

    #[test]
    fn a_false_start_is_released() {
        let (out, stopped) = run(&["END"], &["abc E", "x"]);
        assert_eq!(out.concat(), "abc Ex");
        assert_eq!(out[0], "abc ");
        assert!(!stopped);
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_text_is_cut_on_char_boundaries() {
        let (out, _) = run(&["ü!", "b"], &["aéü", "!b"]);
        assert_eq!(out.concat(), "aé");
        let (out, _) = run(&["xyz"], &["日本x", "y", "語"]);
        assert_eq!(out.concat(), "日本xy語");
    }

    #[test]
    fn no_stops_passes_everything() {
        let (out, stopped) = run(&[], &["a", "b"]);
        assert_eq!(out, ["a", "b", ""]);
        assert!(!stopped);
    }
}
