//! A location's `$cache_*` settings worked out once, at configuration time, from its literal
//! `set`s, and what a request's variables must hold for them to be the request's.
//!
//! `set $cache_stale 100;` makes nginx point the variable's value at the literal's bytes in
//! the configuration's memory, which nothing changes while that configuration serves
//! requests. So when a request's variable points at exactly those bytes (same address, same
//! length), its value is the literal, and the settings parsed from the literals are the
//! request's own, the key aside: nothing to compare byte by byte, nothing to parse. The nginx
//! side (`stale::variables::PresetSlots`) checks each variable's value slot against
//! [`Preset::expected`]; any other value (set by an `if`, through another variable, at server
//! level, or evaluated by someone else first) fails the check, and the request's variables
//! are parsed as before ([`Settings::parse`]).

use crate::settings::{Key, RawVars, Settings, Var, MAX_KEY_LEN};

/// The settings a location's literal `set`s give, and what each variable must hold for them.
#[derive(Debug)]
pub struct Preset {
    /// Per variable: the literal's address and length (never 0), or `None`: no value.
    expect: [Option<(usize, usize)>; Var::COUNT],
    /// The parsed literals, with an empty key.
    settings: Settings,
}

/// The key the literals are parsed with: any valid key parses the rest the same way.
const STAND_IN_KEY: &[u8] = b"k";

/// The literal `set $cache_* ...` values a location's requests run, one per variable: the
/// address of the literal's bytes in the configuration's memory, and a copy of them.
#[derive(Clone, Debug, Default)]
pub struct Literals(Vec<(Var, usize, Vec<u8>)>);

impl Literals {
    /// Adds a `set` of the location's script, in script order: a variable's first `set`
    /// counts, the one a request runs unless an `if` changes it.
    pub fn push(&mut self, var: Var, addr: usize, bytes: &[u8]) {
        if var != Var::Key && !self.0.iter().any(|(v, _, _)| *v == var) {
            self.0.push((var, addr, bytes.to_vec()));
        }
    }

    /// Adds the enclosing block's literals for the variables this location does not set: a
    /// server's `set`s run before its locations' scripts, and an `if` block's `set`s are
    /// compiled into its location's script.
    pub fn inherit(&mut self, parent: &Literals) {
        for (var, addr, bytes) in &parent.0 {
            self.push(*var, *addr, bytes);
        }
    }
}

impl Preset {
    /// The preset of a location whose requests run `literals`; variables without one must be
    /// unset. `None` when those values do not make valid settings (a required one is not a
    /// literal, or a value is bad): every request is then parsed. The key is never preset (it
    /// is per request).
    pub fn new(literals: &Literals) -> Option<Preset> {
        let mut expect = [None; Var::COUNT];
        let mut raw = RawVars::new();
        for (var, addr, bytes) in &literals.0 {
            if !bytes.is_empty() {
                expect[var.index()] = Some((*addr, bytes.len()));
            }
            raw.set(*var, Some(bytes));
        }
        raw.set(Var::Key, Some(STAND_IN_KEY));
        let settings = Settings::parse_uncached(&raw).ok()??.with_key(b"");
        Some(Preset { expect, settings })
    }

    /// What `var` must hold: the literal's bytes (address, length), or `None`: no value (an
    /// empty literal counts as none, as in [`RawVars`]). Always `None` for the key, which is
    /// read per request.
    pub fn expected(&self, var: Var) -> Option<(usize, usize)> {
        self.expect[var.index()]
    }

    /// The settings with `key`; `None` when the key would not parse (unset, empty, too
    /// long): the full parse then says why.
    pub fn with_key(&self, key: Option<&[u8]>) -> Option<Settings> {
        self.with_key_as(key, Key::new)
    }

    /// [`Preset::with_key`], the key made by `make` (e.g. kept in the request's pool).
    pub fn with_key_as(
        &self,
        key: Option<&[u8]>,
        make: impl FnOnce(&[u8]) -> Key,
    ) -> Option<Settings> {
        let key = key.filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)?;
        Some(self.settings.keyed(make(key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The literals of lua-resty-cache's documented location (the key is not a literal).
    fn seed() -> Vec<(Var, &'static [u8])> {
        vec![
            (Var::Lock, b"bench"),
            (Var::Ttl, b"/redisttl"),
            (Var::Persist, b"/redispersist"),
            (Var::Stale, b"100"),
            (Var::LockExptime, b"30"),
            (Var::BackendLockTimeout, b"0.01"),
            (Var::LockTimeout, b"3"),
            (Var::LockTimeoutWait, b"0.06"),
            (Var::SkipFetch, b"X-Skip-Fetch"),
        ]
    }

    /// `literals` as [`Preset::new`] takes them, each at its own address.
    fn at(literals: &[(Var, &[u8])]) -> Literals {
        let mut out = Literals::default();
        for &(var, bytes) in literals {
            out.push(var, bytes.as_ptr() as usize, bytes);
        }
        out
    }

    fn where_is(bytes: &[u8]) -> Option<(usize, usize)> {
        Some((bytes.as_ptr() as usize, bytes.len()))
    }

    fn raw_of<'a>(literals: &[(Var, &'a [u8])], key: &'a [u8]) -> RawVars<'a> {
        let mut raw = RawVars::new().with(Var::Key, key);
        for &(var, bytes) in literals {
            raw.set(var, Some(bytes));
        }
        raw
    }

    #[test]
    fn the_preset_is_what_the_full_parse_gives() {
        let literals = seed();
        let preset = Preset::new(&at(&literals)).expect("valid literals");
        for key in [&b"Mozilla|/d/item"[..], b"k", &[b'x'; MAX_KEY_LEN]] {
            let parsed = Settings::parse_uncached(&raw_of(&literals, key)).unwrap();
            assert_eq!(preset.with_key(Some(key)), parsed, "{}", key.escape_ascii());
        }
        // Every optional variable, as literals.
        let mut all = seed();
        all.extend([
            (Var::Expire, &b"/expire"[..]),
            (Var::Methods, b"get, HEAD"),
            (Var::PassTtl, b"0"),
            (Var::StaleIfError, b"off"),
            (Var::Purge, b"/purge"),
            (Var::Lease, b"off"),
        ]);
        let preset = Preset::new(&at(&all)).unwrap();
        let parsed = Settings::parse_uncached(&raw_of(&all, b"key")).unwrap();
        assert_eq!(preset.with_key(Some(b"key")), parsed);
        for (var, bytes) in all {
            assert_eq!(preset.expected(var), where_is(bytes), "{var}");
        }
    }

    #[test]
    fn variables_without_a_literal_must_have_no_value() {
        let literals = seed();
        let preset = Preset::new(&at(&literals)).unwrap();
        for var in Var::ALL {
            match literals.iter().find(|(v, _)| *v == var) {
                Some((_, bytes)) => assert_eq!(preset.expected(var), where_is(bytes)),
                None => assert_eq!(preset.expected(var), None, "{var}"),
            }
        }
    }

    #[test]
    fn keys_that_would_not_parse_are_left_to_the_full_parse() {
        let preset = Preset::new(&at(&seed())).unwrap();
        assert_eq!(preset.with_key(None), None);
        assert_eq!(preset.with_key(Some(b"")), None);
        assert_eq!(preset.with_key(Some(&[b'x'; MAX_KEY_LEN + 1])), None);
    }

    #[test]
    fn no_preset_without_valid_literals() {
        // A required variable that is no literal (set through a variable, or not at all).
        let mut without_lock = seed();
        without_lock.retain(|(v, _)| *v != Var::Lock);
        assert!(Preset::new(&at(&without_lock)).is_none());
        // A bad value: every request logs it, as before.
        let mut bad = seed();
        bad.retain(|&(v, _)| v != Var::LockTimeout);
        bad.push((Var::LockTimeout, b"x"));
        assert!(Preset::new(&at(&bad)).is_none());
        assert!(Preset::new(&Literals::default()).is_none());
    }

    #[test]
    fn the_key_is_never_preset() {
        let mut literals = seed();
        literals.push((Var::Key, b"literal-key"));
        let preset = Preset::new(&at(&literals)).unwrap();
        assert_eq!(preset.expected(Var::Key), None);
        assert_eq!(preset.with_key(Some(b"k2")).unwrap().key, b"k2");
    }

    #[test]
    fn the_first_set_of_a_variable_counts() {
        // `set $cache_stale 100; if (...) { set $cache_stale 5; }`: one script for both.
        let mut literals = seed();
        let five: &[u8] = b"5";
        literals.push((Var::Stale, five));
        let preset = Preset::new(&at(&literals)).unwrap();
        assert_eq!(preset.with_key(Some(b"k")).unwrap().stale_ms, 100_000);
        assert_eq!(preset.expected(Var::Stale), where_is(seed()[3].1));
    }

    #[test]
    fn a_block_inherits_what_it_does_not_set() {
        let seed = seed();
        let server = at(&seed);
        let mine: &[u8] = b"5";
        let mut location = at(&[(Var::Stale, mine)]);
        location.inherit(&server);
        let preset = Preset::new(&location).unwrap();
        assert_eq!(preset.with_key(Some(b"k")).unwrap().stale_ms, 5_000);
        assert_eq!(preset.expected(Var::Stale), where_is(mine));
        assert_eq!(preset.expected(Var::Lock), where_is(seed[0].1));
        // An `if` block has no script of its own: its location's literals are its own.
        let mut if_block = Literals::default();
        if_block.inherit(&location);
        assert_eq!(Preset::new(&if_block).unwrap().expect, preset.expect);
    }

    #[test]
    fn an_empty_literal_is_no_value() {
        let mut literals = seed();
        literals.push((Var::Expire, b""));
        let preset = Preset::new(&at(&literals)).unwrap();
        assert_eq!(preset.expected(Var::Expire), None);
        assert_eq!(preset.with_key(Some(b"k")).unwrap().expire_uri, None);
    }
}
