//! One self-contained HTML page (`keel visualize report`): every picture embedded as a
//! `data:` URL and the style inline, so the file opens in any browser from anywhere, mailed,
//! copied or offline, with no server and nothing fetched.
//!
//! A short inline script counts the images the browser actually decoded and writes the count
//! on `<body data-decoded="N/M">`: a broken picture shows there, and the tests read it from a
//! real headless browser.

use std::fmt::Write;

/// A picture with its caption.
pub struct Figure {
    pub caption: String,
    /// A complete PNG file.
    pub png: Vec<u8>,
}

/// A heading, a paragraph and its pictures.
pub struct Section {
    pub heading: String,
    pub text: String,
    pub figures: Vec<Figure>,
}

/// The page: a title, an introduction, then sections in order.
pub struct Report {
    pub title: String,
    pub intro: String,
    pub sections: Vec<Section>,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;\
padding:0 1em;color:#222;line-height:1.5}h1{font-size:1.6em}h2{font-size:1.25em;\
border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}figure{display:inline-block;\
margin:.5em 1em .5em 0;vertical-align:top}figure img{max-width:100%;border:1px solid #ccc;\
image-rendering:pixelated}figcaption{font-size:.9em;color:#555}";

const COUNT_DECODED: &str = "window.addEventListener('load',function(){var i=document.images,\
n=0;for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)n++;}\
document.body.setAttribute('data-decoded',n+'/'+i.length);});";

impl Report {
    pub fn to_html(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n<script>{COUNT_DECODED}</script>\n\
             </head>\n<body>\n<h1>{}</h1>\n<p>{}</p>\n",
            escape(&self.title),
            escape(&self.title),
            escape(&self.intro)
        );
        for sec in &self.sections {
            let _ = write!(
                s,
                "<h2>{}</h2>\n<p>{}</p>\n",
                escape(&sec.heading),
                escape(&sec.text)
            );
            for f in &sec.figures {
                let _ = writeln!(
                    s,
                    "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\">\
                     <figcaption>{}</figcaption></figure>",
                    escape(&f.caption),
                    base64(&f.png),
                    escape(&f.caption)
                );
            }
        }
        s.push_str("</body>\n</html>\n");
        s
    }
}

/// Text as HTML shows it: the five characters with a meaning there escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648), what a `data:` URL carries.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        // RFC 4648, section 10.
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn text_is_escaped_and_images_embedded() {
        let r = Report {
            title: "a <b> & \"c\"".into(),
            intro: "it's".into(),
            sections: vec![Section {
                heading: "maps".into(),
                text: "x".into(),
                figures: vec![Figure {
                    caption: "1 < 2".into(),
                    png: b"foo".to_vec(),
                }],
            }],
        };
        let html = r.to_html();
        assert!(
            html.contains("<h1>a &lt;b&gt; &amp; &quot;c&quot;</h1>"),
            "{html}"
        );
        assert!(html.contains("it&#39;s"));
        assert!(html.contains("src=\"data:image/png;base64,Zm9v\""));
        assert!(html.contains("<figcaption>1 &lt; 2</figcaption>"));
        assert!(!html.contains("http"), "nothing is fetched: {html}");
    }
}
