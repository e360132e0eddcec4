//! Just enough DER to read a certificate's notAfter (for the expiry metric), so that no X.509
//! parser joins the dependency tree for one field.
//!
//! `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
//! signature, issuer, validity SEQUENCE { notBefore, notAfter }, … }, … }`

use rustls::pki_types::CertificateDer;

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One tag-length-value: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's notAfter in seconds since the Unix epoch.
pub fn not_after_unix(cert: &CertificateDer<'_>) -> Option<i64> {
    let (SEQUENCE, certificate, _) = tlv(cert)? else { return None };
    let (SEQUENCE, mut tbs, _) = tlv(certificate)? else { return None };
    if tbs.first() == Some(&VERSION) {
        tbs = tlv(tbs)?.2;
    }
    let after_serial = tlv(tbs)?.2;
    let after_signature = tlv(after_serial)?.2;
    let after_issuer = tlv(after_signature)?.2;
    let (SEQUENCE, validity, _) = tlv(after_issuer)? else { return None };
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    parse_time(tag, std::str::from_utf8(time).ok()?)
}

fn parse_time(tag: u8, text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        UTC_TIME if digits.len() == 12 => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        GENERALIZED_TIME if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_time_forms() {
        assert_eq!(parse_time(UTC_TIME, "700101000000Z"), Some(0));
        assert_eq!(parse_time(UTC_TIME, "261202103000Z"), Some(1_796_207_400));
        assert_eq!(parse_time(GENERALIZED_TIME, "20261202103000Z"), Some(1_796_207_400));
        assert_eq!(parse_time(GENERALIZED_TIME, "40960101000000Z"), Some(67_090_118_400));
        assert_eq!(parse_time(UTC_TIME, "2612021030Z"), None);
        assert_eq!(parse_time(UTC_TIME, "261202103000"), None);
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        for bytes in [&[][..], &[0x30], &[0x30, 0x85, 1, 2, 3, 4, 5], &[0x30, 0x02, 0x30, 0x00], &[0x04, 0x01, 0x00]] {
            assert_eq!(not_after_unix(&CertificateDer::from(bytes.to_vec())), None);
        }
    }
}
