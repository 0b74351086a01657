//! fleet's page tokens: URL-safe base64 of little-endian `u16 limit`, `u16 page`.

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;

/// Longest `nextPageToken` looked at (a real one is 8 characters).
pub const MAX_TOKEN_LEN: usize = 64;

/// Which page of a listing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    /// Items per page (must equal the server's `token_limit`).
    pub limit: u16,
    /// 1-based page number.
    pub page: u16,
}

impl PageToken {
    /// The token as sent in `nextPageToken` (page 2 of 100 = `ZAACAA==`).
    pub fn encode(&self) -> String {
        let mut b = [0u8; 4];
        b[..2].copy_from_slice(&self.limit.to_le_bytes());
        b[2..].copy_from_slice(&self.page.to_le_bytes());
        URL_SAFE.encode(b)
    }

    /// Parses a token; the message says what is wrong.
    pub fn decode(s: &str) -> Result<PageToken, String> {
        // A token is 8 characters; anything much longer is refused before decoding (and not echoed).
        if s.len() > MAX_TOKEN_LEN {
            return Err(format!(
                "invalid page token: {} bytes long, a token is at most {MAX_TOKEN_LEN}",
                s.len()
            ));
        }
        let b = URL_SAFE
            .decode(s)
            .map_err(|e| format!("invalid page token {s:?}: {e}"))?;
        if b.len() != 4 {
            return Err(format!(
                "invalid page token {s:?}: expected 4 bytes, found {}",
                b.len()
            ));
        }
        let tok = PageToken {
            limit: u16::from_le_bytes([b[0], b[1]]),
            page: u16::from_le_bytes([b[2], b[3]]),
        };
        if tok.limit == 0 {
            return Err(format!("invalid page token {s:?}: limit must be non-zero"));
        }
        if tok.page == 0 {
            return Err(format!("invalid page token {s:?}: page must be non-zero"));
        }
        Ok(tok)
    }

    /// The token of the following page.
    pub fn next(&self) -> PageToken {
        PageToken {
            limit: self.limit,
            page: self.page.saturating_add(1),
        }
    }

    /// The token from the `nextPageToken` query values: page 1 when absent; a 400 message when
    /// repeated, malformed, or made for another `token_limit`.
    pub fn from_query(values: &[&str], token_limit: u16) -> Result<PageToken, String> {
        match values {
            [] => Ok(PageToken {
                limit: token_limit,
                page: 1,
            }),
            [one] => {
                let tok = PageToken::decode(one)?;
                if tok.limit != token_limit {
                    return Err(format!(
                        "invalid page token: limit {} differs from the server's token_limit {token_limit}",
                        tok.limit
                    ));
                }
                Ok(tok)
            }
            _ => Err("too many values for nextPageToken".into()),
        }
    }

    /// The items of this page and the token of the next one, if more items follow.
    pub fn page_of<'a, T>(&self, all: &'a [T]) -> (&'a [T], Option<PageToken>) {
        let limit = self.limit as usize;
        let start = (self.page as usize - 1).saturating_mul(limit);
        if start >= all.len() {
            return (&[], None);
        }
        let stop = start.saturating_add(limit).min(all.len());
        let more = stop < all.len() && self.page < u16::MAX;
        (&all[start..stop], more.then(|| self.next()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_two_of_the_default_limit_is_fleets_token() {
        let t = PageToken {
            limit: 100,
            page: 2,
        };
        assert_eq!(t.encode(), "ZAACAA==");
        assert_eq!(PageToken::decode("ZAACAA=="), Ok(t));
    }

    #[test]
    fn bad_tokens_are_rejected() {
        assert!(PageToken::decode("!!!").is_err());
        assert!(PageToken::decode("ZAA=").is_err(), "3 bytes");
        assert!(PageToken::decode(
            &PageToken {
                limit: 100,
                page: 0
            }
            .encode()
        )
        .is_err());
        assert!(PageToken::decode(&PageToken { limit: 0, page: 1 }.encode()).is_err());
        assert!(PageToken::from_query(&["ZAACAA==", "ZAACAA=="], 100).is_err());
        assert!(PageToken::from_query(&[&PageToken { limit: 5, page: 2 }.encode()], 100).is_err());
        assert_eq!(
            PageToken::from_query(&[], 100),
            Ok(PageToken {
                limit: 100,
                page: 1
            })
        );
    }

    #[test]
    fn pages_split_items_and_announce_the_next() {
        let items: Vec<u32> = (0..250).collect();
        let first = PageToken::from_query(&[], 100).unwrap();
        let (p1, next) = first.page_of(&items);
        assert_eq!(p1.len(), 100);
        let next = next.unwrap();
        assert_eq!(next.encode(), "ZAACAA==");
        let (p2, next) = next.page_of(&items);
        assert_eq!(p2[0], 100);
        let (p3, next) = next.unwrap().page_of(&items);
        assert_eq!(p3.len(), 50);
        assert_eq!(next, None);
        // Exactly one full page: no token to an empty page.
        let (p, next) = first.page_of(&items[..100]);
        assert_eq!((p.len(), next), (100, None));
        let (p, next) = PageToken {
            limit: 100,
            page: 9,
        }
        .page_of(&items);
        assert!(p.is_empty() && next.is_none());
    }
}
