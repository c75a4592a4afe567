//! Reads the offset tables of DESIGN.md, so unit tests can check the code's constants against
//! the documented format.

/// The rows (offset, size, name) of the table that follows `<!-- marker -->` in DESIGN.md.
pub fn table(marker: &str) -> Vec<(usize, usize, String)> {
    const DESIGN: &str = include_str!("../DESIGN.md");
    let tag = format!("<!-- {marker} -->");
    let start = DESIGN.find(&tag).unwrap_or_else(|| panic!("DESIGN.md has no {tag}")) + tag.len();
    DESIGN[start..]
        .lines()
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| line.starts_with('|'))
        .skip(2) // the heading and the separator
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let number =
                |s: &str| s.parse::<usize>().unwrap_or_else(|_| panic!("not a number in {line}"));
            (number(cells[1]), number(cells[2]), cells[4].to_string())
        })
        .collect()
}
