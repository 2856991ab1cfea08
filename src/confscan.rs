//! Pure: finding the line of a location's `set $cache_* ...;` in its configuration file, so
//! `nginx -t` points at it. nginx keeps no line numbers in the rewrite module's compiled
//! script, and the checks run at merge time, when nginx's own position is the end of the
//! `http` block; the layer records where each location opened and reads the file again.

/// The line (1-based) of the `set $<var> ...;` directive of the block that opens on line
/// `opened` of `text`, preferring one whose value is `value` (quotes removed); nested
/// `location` blocks are skipped (`if` blocks are not: their `set`s are the location's).
pub fn set_line(text: &[u8], opened: usize, var: &[u8], value: &[u8]) -> Option<usize> {
    let mut first = None;
    let mut exact = None;
    directives(text, opened, |words, at| {
        if words.len() >= 2 && words[0] == b"set" && words[1].strip_prefix(b"$") == Some(var) {
            if exact.is_none() && words.get(2).is_some_and(|v| v == value) {
                exact = Some(at);
            }
            first.get_or_insert(at);
        }
    });
    exact.or(first)
}

/// The literal store time of the block opening on line `opened`: the `exptime=N` argument of
/// its `srcache_store` (lua-resty-cache's and srcache's documented way to pass it to the
/// store location), with the directive's line. `None` when absent or not a literal number.
pub fn store_exptime(text: &[u8], opened: usize) -> Option<(u64, usize)> {
    let mut found = None;
    directives(text, opened, |words, at| {
        if words.first().is_some_and(|w| w == b"srcache_store") {
            found = words
                .iter()
                .skip(1)
                .find_map(|w| exptime_arg(w))
                .map(|n| (n, at));
        }
    });
    found
}

fn exptime_arg(word: &[u8]) -> Option<u64> {
    let at = word
        .windows(8)
        .position(|w| w == b"exptime=")
        .filter(|&i| i == 0 || matches!(word[i - 1], b'&' | b'?'))?;
    let digits = word[at + 8..].split(|&b| b == b'&').next()?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 12 {
        return None;
    }
    core::str::from_utf8(digits).ok()?.parse().ok()
}

/// Calls `each(words, line)` for every directive of the block opening on line `opened`
/// (quotes removed, comments skipped, nested `location` blocks left out).
fn directives(text: &[u8], opened: usize, mut each: impl FnMut(&[Vec<u8>], usize)) {
    let mut depth = 0usize;
    let mut skip_depth = None;
    let mut seen_open = false;
    let mut line = 1usize;
    let mut words: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut word = Vec::new();
    let mut word_line = 0;
    let mut quote = None;
    let mut comment = false;
    let mut i = 0;
    // Lines before the block are skipped by counting newlines only.
    while i < text.len() && line < opened {
        if text[i] == b'\n' {
            line += 1;
        }
        i += 1;
    }
    while i < text.len() {
        let c = text[i];
        i += 1;
        if c == b'\n' {
            line += 1;
            comment = false;
        }
        if comment {
            continue;
        }
        if let Some(q) = quote {
            if c == b'\\' && i < text.len() {
                word.push(text[i]);
                i += 1;
            } else if c == q {
                quote = None;
            } else {
                word.push(c);
            }
            continue;
        }
        let end_word = |word: &mut Vec<u8>, words: &mut Vec<(Vec<u8>, usize)>, at: usize| {
            if !word.is_empty() {
                words.push((core::mem::take(word), at));
            }
        };
        match c {
            b'"' | b'\'' => {
                if word.is_empty() {
                    word_line = line;
                }
                quote = Some(c);
            }
            b'#' if word.is_empty() => comment = true,
            b' ' | b'\t' | b'\r' | b'\n' => end_word(&mut word, &mut words, word_line),
            b'{' => {
                end_word(&mut word, &mut words, word_line);
                // A nested location is another location's business.
                if seen_open
                    && skip_depth.is_none()
                    && words.first().is_some_and(|(w, _)| w == b"location")
                {
                    skip_depth = Some(depth + 1);
                }
                words.clear();
                depth += 1;
                seen_open = true;
            }
            b'}' => {
                end_word(&mut word, &mut words, word_line);
                words.clear();
                depth = depth.saturating_sub(1);
                if skip_depth.is_some_and(|d| depth < d) {
                    skip_depth = None;
                }
                if seen_open && depth == 0 {
                    break;
                }
            }
            b';' => {
                end_word(&mut word, &mut words, word_line);
                if seen_open && skip_depth.is_none() && !words.is_empty() {
                    let at = words[0].1;
                    let plain: Vec<Vec<u8>> = words.drain(..).map(|(w, _)| w).collect();
                    each(&plain, at);
                }
                words.clear();
            }
            _ => {
                if word.is_empty() {
                    word_line = line;
                }
                word.push(c);
            }
        }
    }
}

/// The name nearest to `typo` among `names` (at most two edits away, and not `typo` itself):
/// for "did you mean ...?".
pub fn nearest<'a>(typo: &[u8], names: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    names
        .into_iter()
        .map(|n| (edit_distance(typo, n), n))
        .filter(|&(d, _)| d > 0 && d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, &x) in a.iter().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, &y) in b.iter().enumerate() {
            let swap = usize::from(!x.eq_ignore_ascii_case(&y));
            row[j + 1] = (prev[j] + swap).min(prev[j + 1] + 1).min(row[j] + 1);
        }
        prev = row;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &[u8] = b"http {
    location /a {
        set $cache_stale 100;
    }
    location /api {   # the one
        set $cache_lock srcache_locks;
        # set $cache_stale 5;
        set $cache_stale \"abc\";
        if ($x) { set $cache_ttl /t; }
        location /api/in { set $cache_stale abc; }
        set $cache_key \"a;b\"; set $cache_stale x;
    }
    location /b { set $cache_stale abc; }
}
";

    #[test]
    fn finds_the_set_of_its_own_block() {
        assert_eq!(set_line(CONF, 5, b"cache_stale", b"abc"), Some(8));
        assert_eq!(set_line(CONF, 5, b"cache_stale", b"x"), Some(11));
        // no value match: the first set of the variable
        assert_eq!(set_line(CONF, 5, b"cache_stale", b"zzz"), Some(8));
        assert_eq!(set_line(CONF, 5, b"cache_lock", b"srcache_locks"), Some(6));
        assert_eq!(set_line(CONF, 5, b"cache_ttl", b"/t"), Some(9));
        assert_eq!(set_line(CONF, 5, b"cache_key", b"a;b"), Some(11));
        assert_eq!(set_line(CONF, 2, b"cache_stale", b"abc"), Some(3));
        assert_eq!(set_line(CONF, 5, b"cache_purge", b"/p"), None);
        assert_eq!(set_line(CONF, 99, b"cache_stale", b"abc"), None);
    }

    #[test]
    fn literal_store_time() {
        let conf =
            b"location /api {\n  set $x 1;\n  srcache_store PUT /redis2 key=$k&exptime=105;\n}\n";
        assert_eq!(store_exptime(conf, 1), Some((105, 3)));
        let var = b"location /api {\n  srcache_store PUT /redis2 key=$k&exptime=$e;\n}\n";
        assert_eq!(store_exptime(var, 1), None);
        let other = b"location /api {\n  srcache_store PUT /redis2 key=$k&myexptime=5;\n}\n";
        assert_eq!(store_exptime(other, 1), None);
        assert_eq!(exptime_arg(b"exptime=165"), Some(165));
        assert_eq!(exptime_arg(b"a=1&exptime=7&b=2"), Some(7));
    }

    #[test]
    fn nearest_name() {
        let zones: [&[u8]; 2] = [b"srcache_locks", b"hot"];
        assert_eq!(nearest(b"srcache_lock", zones), Some(&b"srcache_locks"[..]));
        assert_eq!(nearest(b"srcache_locks", zones), None);
        assert_eq!(nearest(b"other", zones), None);
    }
}
