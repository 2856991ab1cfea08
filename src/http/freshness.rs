//! May a response be stored by a shared cache, and with which windows: RFC 9111 sections 3,
//! 4.2 and 5.2.2, RFC 5861, and nginx's `X-Accel-Expires`.

use super::date;
use super::windows::Windows;

/// The operator's numbers for the mode (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Freshness of a response that gives none; `None`: such responses are not stored.
    pub default_fresh: Option<u64>,
    /// The longest freshness kept, whatever the origin says.
    pub max_fresh: u64,
    /// The stale window when the origin sends no `stale-while-revalidate=`.
    pub stale: u64,
    /// The longest stale window, the origin's included.
    pub max_stale: u64,
    /// The error grace band when the origin sends no `stale-if-error=`.
    pub grace: u64,
    /// The longest error grace band, the origin's included.
    pub max_grace: u64,
    /// How long a response with a validator (`ETag`, `Last-Modified`) is kept past its
    /// freshness (and stale window) to be revalidated with a conditional request (0: not).
    /// It shares the error grace band: a request there revalidates before being answered.
    pub revalidate: u64,
    /// Heuristic freshness (RFC 9111 4.2.2) of a response without explicit freshness but
    /// with `Last-Modified`: this percentage of the time since then (0: none).
    pub heuristic_percent: u64,
    /// The longest heuristic freshness.
    pub max_heuristic: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_fresh: None,
            max_fresh: 365 * 86_400,
            stale: 0,
            max_stale: 86_400,
            grace: 0,
            max_grace: 86_400,
            revalidate: 0,
            heuristic_percent: 0,
            max_heuristic: 86_400,
        }
    }
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    NoStore,
    Private,
    /// `no-cache`: every use needs a revalidation, which entries cannot do yet.
    NoCache,
    /// No explicit freshness and no default.
    NoFreshness,
    /// Its freshness ran out before it arrived (or is 0).
    Expired,
    /// A status a shared cache does not store (or not without explicit freshness).
    Status,
    /// `Vary: *`: no request can be matched to it (RFC 9111 4.1), so it is not stored.
    Vary,
    /// A response to a request with `Authorization` that does not allow sharing it.
    Authorization,
    /// An `Age` that is not one non-negative integer.
    InvalidAge,
}

impl Skip {
    pub const fn as_str(self) -> &'static str {
        match self {
            Skip::NoStore => "no-store",
            Skip::Private => "private",
            Skip::NoCache => "no-cache",
            Skip::NoFreshness => "no-freshness",
            Skip::Expired => "expired",
            Skip::Status => "status",
            Skip::Vary => "vary",
            Skip::Authorization => "authorization",
            Skip::InvalidAge => "invalid-age",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Store(Windows),
    Skip(Skip),
}

/// This cache's device token in `Surrogate-Control` targets: a configuration announces it
/// with `Surrogate-Capability: stale-cache="Surrogate/1.0"` on requests to the origin.
pub const SURROGATE_TARGET: &str = "stale-cache";

/// Delta-seconds are capped here (RFC 9111 1.2.2).
const DELTA_MAX: u64 = 2_147_483_648;

/// A delta-seconds value: digits only (a double-quoted one accepted); `None` when invalid.
fn delta_seconds(value: &[u8]) -> Option<u64> {
    let v = match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| {
        (n.saturating_mul(10).saturating_add(u64::from(d - b'0'))).min(DELTA_MAX)
    }))
}

/// The Cache-Control directives of a response that matter here. For a directive given more
/// than once, the first one counts (RFC 9111 4.2.1).
#[derive(Default, Debug, PartialEq, Eq)]
struct Directives {
    no_store: bool,
    private: bool,
    no_cache: bool,
    public: bool,
    must_revalidate: bool,
    must_understand: bool,
    /// `s-maxage` present (valid or not): also forbids serving stale.
    has_s_maxage: bool,
    /// `Some(None)`: present but invalid, which makes the response stale.
    s_maxage: Option<Option<u64>>,
    max_age: Option<Option<u64>>,
    swr: Option<u64>,
    sie: Option<u64>,
}

/// Splits one Cache-Control field line into `(name, value)` pairs; commas inside a quoted
/// value do not split.
fn directives_of(line: &[u8], out: &mut Directives) {
    let mut rest = line;
    while !rest.is_empty() {
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if in_quotes && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = !in_quotes;
            } else if b == b',' && !in_quotes {
                end = i;
                break;
            }
        }
        let mut item = rest[..end].trim_ascii();
        // Surrogate-Control's "directive;target": a directive for another surrogate is not
        // this cache's (Cache-Control has no targets, so nothing changes there).
        if let Some(semi) = item.iter().position(|&b| b == b';') {
            let target = item[semi + 1..].trim_ascii();
            if target.is_empty() || target.eq_ignore_ascii_case(SURROGATE_TARGET.as_bytes()) {
                item = item[..semi].trim_ascii();
            } else {
                item = &[];
            }
        }
        rest = if end < rest.len() {
            &rest[end + 1..]
        } else {
            &[]
        };
        if item.is_empty() {
            continue;
        }
        let (name, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"no-store") {
            out.no_store = true;
        } else if is(b"private") {
            out.private = true;
        } else if is(b"no-cache") {
            out.no_cache = true;
        } else if is(b"public") {
            out.public = true;
        } else if is(b"must-understand") {
            out.must_understand = true;
        } else if is(b"must-revalidate") || is(b"proxy-revalidate") {
            out.must_revalidate = true;
        } else if is(b"s-maxage") {
            out.has_s_maxage = true;
            if out.s_maxage.is_none() {
                out.s_maxage = Some(value.and_then(delta_seconds));
            }
        } else if is(b"max-age") {
            if out.max_age.is_none() {
                out.max_age = Some(value.and_then(delta_seconds));
            }
        } else if is(b"stale-while-revalidate") {
            if out.swr.is_none() {
                out.swr = value.and_then(delta_seconds);
            }
        } else if is(b"stale-if-error") && out.sie.is_none() {
            out.sie = value.and_then(delta_seconds);
        }
    }
}

/// Statuses a shared cache may store without explicit freshness (RFC 9110 15.1, "heuristically
/// cacheable"), and so with a default freshness from the operator.
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses this cache understands (for `must-understand`): those of RFC 9110.
fn understood_status(status: u16) -> bool {
    matches!(status, 200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505)
}

/// Statuses never stored: interim and partial responses. (A 304 updates a stored response:
/// the store script merges it, and stores nothing without one.)
fn never_stored(status: u16) -> bool {
    !(200..=599).contains(&status) || status == 206
}

/// What the response's headers say, gathered in one pass.
#[derive(Default)]
struct Facts<'a> {
    cc: Directives,
    /// Surrogate-Control (W3C Edge Architecture): for caches like this one, it wins over
    /// Cache-Control.
    sc: Option<Directives>,
    expires: Option<&'a [u8]>,
    expires_lines: usize,
    date: Option<&'a [u8]>,
    age: Option<&'a [u8]>,
    age_lines: usize,
    x_accel_expires: Option<&'a [u8]>,
    vary: bool,
    validator: bool,
    last_modified: Option<&'a [u8]>,
}

/// Judges a response: `status`, its header lines, whether the request carried
/// `Authorization`, the time it arrived (Unix seconds) and the operator's limits.
pub fn judge<'a>(
    status: u16,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    request_authorization: bool,
    now: i64,
    limits: &Limits,
) -> Verdict {
    let mut f = Facts::default();
    for (name, value) in headers {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if is(b"cache-control") {
            directives_of(value, &mut f.cc);
        } else if is(b"surrogate-control") {
            directives_of(value, f.sc.get_or_insert_with(Directives::default));
        } else if is(b"expires") {
            f.expires_lines += 1;
            f.expires.get_or_insert(value);
        } else if is(b"date") {
            f.date.get_or_insert(value);
        } else if is(b"age") {
            f.age_lines += 1;
            f.age.get_or_insert(value);
        } else if is(b"x-accel-expires") {
            f.x_accel_expires.get_or_insert(value);
        } else if is(b"etag") {
            f.validator = true;
        } else if is(b"last-modified") {
            f.validator = true;
            f.last_modified.get_or_insert(value);
        } else if is(b"vary") && super::vary::has_star(value) {
            f.vary = true;
        }
    }
    let cc = &f.cc;
    if never_stored(status) {
        return Verdict::Skip(Skip::Status);
    }
    // must-understand: stored only with a status this cache knows, and then no-store yields.
    let understood = cc.must_understand && understood_status(status);
    if cc.must_understand && !understood {
        return Verdict::Skip(Skip::Status);
    }
    let surrogate_fresh = f.sc.as_ref().is_some_and(|sc| sc.max_age.is_some());
    if f.sc.as_ref().is_some_and(|sc| sc.no_store) {
        return Verdict::Skip(Skip::NoStore);
    }
    if !surrogate_fresh {
        if cc.no_store && !understood {
            return Verdict::Skip(Skip::NoStore);
        }
        if cc.private {
            return Verdict::Skip(Skip::Private);
        }
        if cc.no_cache && !(f.validator && limits.revalidate > 0) {
            return Verdict::Skip(Skip::NoCache);
        }
    }
    // Kept to be revalidated: a response with a validator, when the operator allows it.
    let revalidate = if f.validator { limits.revalidate } else { 0 };
    let stale_from_birth = cc.no_cache && revalidate > 0;
    if f.vary {
        return Verdict::Skip(Skip::Vary);
    }
    if request_authorization && !(cc.public || cc.has_s_maxage || cc.must_revalidate) {
        return Verdict::Skip(Skip::Authorization);
    }
    // The response's age when it arrived (RFC 9111 4.2.3; the response delay is negligible
    // next to a second).
    let age_value = match f.age {
        None => 0,
        Some(v) if f.age_lines == 1 => match delta_seconds(v.trim_ascii()) {
            Some(a) => a,
            None => return Verdict::Skip(Skip::InvalidAge),
        },
        Some(_) => return Verdict::Skip(Skip::InvalidAge),
    };
    let date = f.date.and_then(date::parse);
    let apparent_age = date.map_or(0, |d| u64::try_from(now - d).unwrap_or(0));
    let age = age_value.max(apparent_age);

    // Freshness lifetime: X-Accel-Expires (nginx's), s-maxage, max-age, Expires - Date.
    let explicit: Option<i64> = if let Some(x) = f.x_accel_expires.map(<[u8]>::trim_ascii) {
        match x {
            [b'@', abs @ ..] => {
                delta_seconds(abs).map(|t| i64::try_from(t).unwrap_or(i64::MAX) - now + age as i64)
            }
            _ => delta_seconds(x).map(|s| s as i64),
        }
        .or(Some(0))
    } else if let Some(m) = f.sc.as_ref().and_then(|sc| sc.max_age) {
        Some(m.map_or(0, |m| m as i64))
    } else if let Some(s) = cc.s_maxage {
        Some(s.map_or(0, |s| s as i64))
    } else if let Some(m) = cc.max_age {
        Some(m.map_or(0, |m| m as i64))
    } else if let Some(e) = f.expires {
        // An invalid Expires, or more than one, means already expired.
        let e = if f.expires_lines == 1 {
            date::parse(e)
        } else {
            None
        };
        Some(e.map_or(0, |e| e - date.unwrap_or(now)))
    } else {
        None
    };
    // Heuristic freshness (RFC 9111 4.2.2): a share of the time since Last-Modified, for
    // statuses that allow it or a response marked public.
    let heuristic = || -> Option<i64> {
        if limits.heuristic_percent == 0 || !(heuristically_cacheable(status) || cc.public) {
            return None;
        }
        let since = date.unwrap_or(now) - date::parse(f.last_modified?)?;
        let h = u64::try_from(since).ok()? * limits.heuristic_percent / 100;
        (h > 0).then(|| h.min(limits.max_heuristic) as i64)
    };
    let lifetime = match explicit {
        Some(l) => l,
        None if stale_from_birth => 0,
        None => match heuristic() {
            Some(h) => h,
            None if !heuristically_cacheable(status) => return Verdict::Skip(Skip::Status),
            None => match limits.default_fresh {
                Some(d) => d as i64,
                None => return Verdict::Skip(Skip::NoFreshness),
            },
        },
    };
    let remaining = lifetime.saturating_sub(i64::try_from(age).unwrap_or(i64::MAX));
    if remaining <= 0 && revalidate == 0 {
        return Verdict::Skip(Skip::Expired);
    }
    let fresh = if stale_from_birth {
        0
    } else {
        u64::try_from(remaining).unwrap_or(0).min(limits.max_fresh)
    };
    let (stale, grace) = if cc.must_revalidate || cc.has_s_maxage || stale_from_birth {
        (0, revalidate)
    } else {
        (
            cc.swr.unwrap_or(limits.stale).min(limits.max_stale),
            cc.sie
                .unwrap_or(limits.grace)
                .min(limits.max_grace)
                .max(revalidate),
        )
    };
    if fresh == 0 && grace == 0 {
        return Verdict::Skip(Skip::Expired);
    }
    Verdict::Store(Windows {
        fresh,
        stale,
        grace,
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn run(status: u16, headers: &[(&str, &str)], auth: bool, limits: &Limits) -> Verdict {
        judge(
            status,
            headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            auth,
            NOW,
            limits,
        )
    }

    fn store(headers: &[(&str, &str)]) -> Verdict {
        run(200, headers, false, &Limits::default())
    }

    fn w(fresh: u64, stale: u64, grace: u64, age: u64) -> Verdict {
        Verdict::Store(Windows {
            fresh,
            stale,
            grace,
            age,
        })
    }

    #[test]
    fn precedence_s_maxage_max_age_expires() {
        assert_eq!(store(&[("Cache-Control", "max-age=60")]), w(60, 0, 0, 0));
        assert_eq!(store(&[("Cache-Control", "MaX-aGe=60")]), w(60, 0, 0, 0));
        assert_eq!(
            store(&[("Cache-Control", "max-age=3600, s-maxage=2")]),
            w(2, 0, 0, 0)
        );
        assert_eq!(
            store(&[
                ("Cache-Control", "max-age=3600"),
                ("cache-control", "s-maxage=2")
            ]),
            w(2, 0, 0, 0)
        );
        assert_eq!(
            store(&[
                ("Cache-Control", "max-age=30"),
                ("Expires", "Fri, 01 Jan 2038 01:01:01 GMT")
            ]),
            w(30, 0, 0, 0)
        );
        let date = "Fri, 15 Jan 2027 08:00:00 GMT";
        let in_100 = "Fri, 15 Jan 2027 08:01:40 GMT";
        let now = date::parse(date.as_bytes()).unwrap();
        let v = judge(
            200,
            [
                (&b"Date"[..], date.as_bytes()),
                (b"Expires", in_100.as_bytes()),
            ],
            false,
            now,
            &Limits::default(),
        );
        assert_eq!(v, w(100, 0, 0, 0));
    }

    #[test]
    fn x_accel_expires_overrides() {
        let h = [("Cache-Control", "max-age=5"), ("X-Accel-Expires", "50")];
        assert_eq!(store(&h), w(50, 0, 0, 0));
        let h = [("Cache-Control", "max-age=5"), ("X-Accel-Expires", "0")];
        assert_eq!(store(&h), Verdict::Skip(Skip::Expired));
        let abs = format!("@{}", NOW + 70);
        let h = [("X-Accel-Expires", abs.as_str())];
        assert_eq!(store(&h), w(70, 0, 0, 0));
    }

    #[test]
    fn age_counts_and_must_be_one_integer() {
        let cc = ("Cache-Control", "max-age=3600");
        assert_eq!(store(&[cc, ("Age", "600")]), w(3000, 0, 0, 600));
        assert_eq!(store(&[cc, ("Age", "7200")]), Verdict::Skip(Skip::Expired));
        for bad in ["abc", "-7200", "7200.0", "7200,0", "0, 0", "7200;foo=1"] {
            assert_eq!(
                store(&[cc, ("Age", bad)]),
                Verdict::Skip(Skip::InvalidAge),
                "{bad}"
            );
        }
        assert_eq!(
            store(&[cc, ("Age", "0"), ("Age", "0")]),
            Verdict::Skip(Skip::InvalidAge)
        );
        // An old Date counts as age too.
        let date = "Fri, 15 Jan 2027 08:00:00 GMT";
        let then = date::parse(date.as_bytes()).unwrap();
        let v = judge(
            200,
            [
                (&b"Date"[..], date.as_bytes()),
                (b"Cache-Control", b"max-age=100"),
            ],
            false,
            then + 30,
            &Limits::default(),
        );
        assert_eq!(v, w(70, 0, 0, 30));
    }

    #[test]
    fn no_explicit_freshness() {
        assert_eq!(store(&[]), Verdict::Skip(Skip::NoFreshness));
        let l = Limits {
            default_fresh: Some(10),
            ..Limits::default()
        };
        assert_eq!(run(200, &[], false, &l), w(10, 0, 0, 0));
        assert_eq!(run(404, &[], false, &l), w(10, 0, 0, 0));
        assert_eq!(run(302, &[], false, &l), Verdict::Skip(Skip::Status));
        assert_eq!(run(500, &[], false, &l), Verdict::Skip(Skip::Status));
    }

    #[test]
    fn statuses() {
        let cc = [("Cache-Control", "max-age=60")];
        for s in [
            200, 203, 204, 299, 301, 302, 307, 308, 404, 410, 500, 503, 599,
        ] {
            assert_eq!(
                run(s, &cc, false, &Limits::default()),
                w(60, 0, 0, 0),
                "{s}"
            );
        }
        for s in [100, 206, 600] {
            assert_eq!(
                run(s, &cc, false, &Limits::default()),
                Verdict::Skip(Skip::Status)
            );
        }
    }

    #[test]
    fn not_stored() {
        for (cc, why) in [
            ("max-age=60, no-store", Skip::NoStore),
            ("private, max-age=60", Skip::Private),
            ("max-age=60, no-cache", Skip::NoCache),
            ("no-cache=\"set-cookie\", max-age=60", Skip::NoCache),
            ("max-age=0", Skip::Expired),
            ("max-age=-3600", Skip::Expired),
            ("max-age='3600'", Skip::Expired),
            ("max-age=a3600", Skip::Expired),
        ] {
            assert_eq!(store(&[("Cache-Control", cc)]), Verdict::Skip(why), "{cc}");
        }
        assert!(matches!(
            store(&[("Cache-Control", "max-age=60"), ("Vary", "Accept")]),
            Verdict::Store(_)
        ));
        assert_eq!(
            store(&[("Cache-Control", "max-age=60"), ("Vary", "Accept, *")]),
            Verdict::Skip(Skip::Vary)
        );
        assert_eq!(store(&[("Expires", "0")]), Verdict::Skip(Skip::Expired));
    }

    #[test]
    fn quoting() {
        assert_eq!(
            store(&[("Cache-Control", "max-age=\"60\"")]),
            w(60, 0, 0, 0)
        );
        assert_eq!(
            store(&[("Cache-Control", "max-age=003600")]),
            w(3600, 0, 0, 0)
        );
        assert_eq!(
            store(&[("Cache-Control", "extension=\"max-age=3600\", max-age=1")]),
            w(1, 0, 0, 0)
        );
        assert_eq!(
            store(&[("Cache-Control", "max-age=99999999999")]),
            w(365 * 86_400, 0, 0, 0)
        );
    }

    #[test]
    fn surrogate_control_wins() {
        let h =
            |cc: &'static str, sc: &'static str| [("Cache-Control", cc), ("Surrogate-Control", sc)];
        assert_eq!(store(&h("max-age=1", "max-age=60")), w(60, 0, 0, 0));
        assert_eq!(store(&h("no-store", "max-age=60")), w(60, 0, 0, 0));
        assert_eq!(
            store(&h("max-age=60", "no-store")),
            Verdict::Skip(Skip::NoStore)
        );
        assert_eq!(
            store(&h("max-age=60", "max-age=0")),
            Verdict::Skip(Skip::Expired)
        );
        // Targeted at another surrogate: ignored; at this one: used.
        assert_eq!(store(&h("max-age=1", "max-age=60;other")), w(1, 0, 0, 0));
        assert_eq!(
            store(&h("max-age=1", "max-age=60;Stale-Cache")),
            w(60, 0, 0, 0)
        );
    }

    #[test]
    fn revalidation_band() {
        let l = Limits {
            revalidate: 600,
            ..Limits::default()
        };
        let v = |cc: &'static str| run(200, &[("Cache-Control", cc), ("ETag", "\"x\"")], false, &l);
        assert_eq!(v("max-age=60"), w(60, 0, 600, 0));
        assert_eq!(v("max-age=60, must-revalidate"), w(60, 0, 600, 0));
        assert_eq!(v("no-cache"), w(0, 0, 600, 0));
        assert_eq!(v("max-age=0"), w(0, 0, 600, 0));
        assert_eq!(v("no-store"), Verdict::Skip(Skip::NoStore));
        // Without a validator nothing changes.
        assert_eq!(
            run(200, &[("Cache-Control", "max-age=60")], false, &l),
            w(60, 0, 0, 0)
        );
        assert_eq!(
            run(200, &[("Cache-Control", "no-cache")], false, &l),
            Verdict::Skip(Skip::NoCache)
        );
        // A 304 gets windows from its own headers (the store script merges it).
        assert_eq!(
            run(
                304,
                &[("Cache-Control", "max-age=2"), ("ETag", "\"x\"")],
                false,
                &l
            ),
            w(2, 0, 600, 0)
        );
    }

    #[test]
    fn must_understand() {
        let l = Limits::default();
        let cc = [("Cache-Control", "max-age=60, must-understand")];
        assert_eq!(run(599, &cc, false, &l), Verdict::Skip(Skip::Status));
        assert_eq!(run(200, &cc, false, &l), w(60, 0, 0, 0));
        let cc = [("Cache-Control", "max-age=60, must-understand, no-store")];
        assert_eq!(run(200, &cc, false, &l), w(60, 0, 0, 0));
    }

    #[test]
    fn authorization() {
        let l = Limits::default();
        let cc = |v| [("Cache-Control", v)];
        assert_eq!(
            run(200, &cc("max-age=60"), true, &l),
            Verdict::Skip(Skip::Authorization)
        );
        for ok in [
            "public, max-age=60",
            "s-maxage=60",
            "max-age=60, must-revalidate",
        ] {
            assert!(
                matches!(run(200, &cc(ok), true, &l), Verdict::Store(_)),
                "{ok}"
            );
        }
    }

    #[test]
    fn stale_windows_from_the_origin_with_caps() {
        let l = Limits {
            stale: 10,
            max_stale: 100,
            grace: 5,
            max_grace: 50,
            ..Limits::default()
        };
        let cc = |v| [("Cache-Control", v)];
        assert_eq!(run(200, &cc("max-age=60"), false, &l), w(60, 10, 5, 0));
        assert_eq!(
            run(
                200,
                &cc("max-age=60, stale-while-revalidate=30, stale-if-error=20"),
                false,
                &l
            ),
            w(60, 30, 20, 0)
        );
        assert_eq!(
            run(
                200,
                &cc("max-age=60, stale-while-revalidate=3000, stale-if-error=900"),
                false,
                &l
            ),
            w(60, 100, 50, 0)
        );
        for no_stale in [
            "max-age=60, must-revalidate, stale-while-revalidate=30",
            "max-age=60, proxy-revalidate",
            "s-maxage=60, stale-if-error=30",
        ] {
            assert_eq!(
                run(200, &cc(no_stale), false, &l),
                w(60, 0, 0, 0),
                "{no_stale}"
            );
        }
        let capped = Limits { max_fresh: 20, ..l };
        assert_eq!(run(200, &cc("max-age=60"), false, &capped), w(20, 10, 5, 0));
    }
}

/// A time of the directive's parameters: seconds, or with a unit (`s`, `m`, `h`, `d`).
fn time_secs(v: &[u8]) -> Option<u64> {
    let (digits, unit) = match v.last()? {
        b's' => (&v[..v.len() - 1], 1),
        b'm' => (&v[..v.len() - 1], 60),
        b'h' => (&v[..v.len() - 1], 3600),
        b'd' => (&v[..v.len() - 1], 86_400),
        _ => (v, 1),
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = core::str::from_utf8(digits).ok()?.parse().ok()?;
    n.checked_mul(unit)
}

impl Limits {
    /// `stale_cache_http on [default=T] [max_fresh=T] [stale=T] [max_stale=T]
    /// [stale_if_error=T] [max_stale_if_error=T]` or `off`: the limits, `None` for off.
    pub fn from_args(args: &[&[u8]]) -> Result<Option<Limits>, String> {
        match args.first() {
            Some(&b"off") if args.len() == 1 => return Ok(None),
            Some(&b"on") => {}
            _ => return Err("expected \"on\" or \"off\"".into()),
        }
        let mut l = Limits::default();
        for arg in &args[1..] {
            let text = String::from_utf8_lossy(arg);
            let (name, value) = text
                .split_once('=')
                .ok_or_else(|| format!("invalid parameter \"{text}\""))?;
            let secs = || {
                time_secs(value.as_bytes())
                    .ok_or_else(|| format!("invalid time \"{value}\" in \"{text}\""))
            };
            match name {
                "default" if value == "off" => l.default_fresh = None,
                "default" => l.default_fresh = Some(secs()?),
                "max_fresh" => l.max_fresh = secs()?,
                "stale" => l.stale = secs()?,
                "max_stale" => l.max_stale = secs()?,
                "stale_if_error" => l.grace = secs()?,
                "max_stale_if_error" => l.max_grace = secs()?,
                "revalidate" => l.revalidate = secs()?,
                "heuristic" if value == "off" => l.heuristic_percent = 0,
                "heuristic" => {
                    l.heuristic_percent = value
                        .strip_suffix('%')
                        .and_then(|p| p.parse().ok())
                        .filter(|&p| p <= 100)
                        .ok_or_else(|| format!("expected a percentage such as 10% in \"{text}\""))?
                }
                "max_heuristic" => l.max_heuristic = secs()?,
                _ => return Err(format!("unknown parameter \"{text}\"")),
            }
        }
        Ok(Some(l))
    }
}

#[cfg(test)]
mod directive_tests {
    use super::*;

    #[test]
    fn heuristic_freshness() {
        let now = 1_800_000_000;
        let lm = |ago: i64| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs((now - ago) as u64);
            httpdate(t)
        };
        let limits = Limits::from_args(&[b"on", b"heuristic=10%", b"max_heuristic=1h"])
            .unwrap()
            .unwrap();
        let judge_lm = |status: u16, ago: i64, extra: &[(&str, &str)]| {
            let lm = lm(ago);
            let mut h: Vec<(&[u8], &[u8])> = vec![(b"Last-Modified", lm.as_bytes())];
            h.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
            judge(status, h, false, now, &limits)
        };
        let fresh = |v: Verdict| match v {
            Verdict::Store(w) => Some(w.fresh),
            Verdict::Skip(_) => None,
        };
        assert_eq!(fresh(judge_lm(200, 600, &[])), Some(60));
        assert_eq!(fresh(judge_lm(404, 86_400, &[])), Some(3600), "capped");
        assert_eq!(fresh(judge_lm(200, 5, &[])), None, "under a second");
        assert_eq!(
            fresh(judge_lm(599, 600, &[])),
            None,
            "not heuristically cacheable"
        );
        assert_eq!(
            fresh(judge_lm(599, 600, &[("Cache-Control", "public")])),
            Some(60)
        );
        assert_eq!(
            fresh(judge_lm(200, 600, &[("Cache-Control", "max-age=7")])),
            Some(7),
            "explicit freshness wins"
        );
        assert_eq!(
            fresh(judge_lm(200, 600, &[("Expires", "0")])),
            None,
            "an invalid Expires is explicit: expired"
        );
        let off = Limits::default();
        let lm600 = lm(600);
        assert_eq!(
            judge(
                200,
                [(&b"Last-Modified"[..], lm600.as_bytes())],
                false,
                now,
                &off
            ),
            Verdict::Skip(Skip::NoFreshness)
        );
        assert!(Limits::from_args(&[b"on", b"heuristic=10"]).is_err());
        assert!(Limits::from_args(&[b"on", b"heuristic=101%"]).is_err());
    }

    /// An IMF-fixdate.
    fn httpdate(t: std::time::SystemTime) -> String {
        let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        // civil from days (Howard Hinnant's algorithm)
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
        let mon = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ][(m - 1) as usize];
        format!(
            "{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }

    #[test]
    fn directive_arguments() {
        assert_eq!(Limits::from_args(&[b"off"]), Ok(None));
        assert_eq!(Limits::from_args(&[b"on"]), Ok(Some(Limits::default())));
        let l = Limits::from_args(&[
            b"on",
            b"default=10s",
            b"stale=1m",
            b"max_stale=2h",
            b"max_fresh=1d",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.default_fresh, l.stale, l.max_stale, l.max_fresh),
            (Some(10), 60, 7200, 86_400)
        );
        for bad in [
            &[&b"yes"[..]][..],
            &[b"off", b"stale=1"],
            &[b"on", b"stale"],
            &[b"on", b"stale=x"],
            &[b"on", b"foo=1"],
        ] {
            assert!(Limits::from_args(bad).is_err());
        }
    }
}
