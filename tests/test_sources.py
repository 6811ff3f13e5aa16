import http.server
import threading

import pandas as pd
import pytest

from preprocessing.errors import DataError
from preprocessing.sources import (TransientReadError, dataset_name, fingerprint, load_sample, read_table)


@pytest.fixture
def table():
    return pd.DataFrame({"a": [1.5, 2.0, None], "b": ["x", "y", "z"], "target": [0, 1, 0]})


@pytest.mark.parametrize("name,writer", [
    ("t.csv", lambda df, p: df.to_csv(p, index=False)),
    ("t.parquet", lambda df, p: df.to_parquet(p, index=False)),
    ("t.jsonl", lambda df, p: df.to_json(p, orient="records", lines=True)),
    ("t.json", lambda df, p: df.to_json(p, orient="records")),
    ("t.data", lambda df, p: df.to_parquet(p, index=False)),  # parquet recognised by content, not name
])
def test_reads_each_format(tmp_path, table, name, writer):
    path = tmp_path / name
    writer(table, path)
    frame = read_table(str(path))
    assert list(frame.columns) == ["a", "b", "target"]
    assert frame["b"].tolist() == ["x", "y", "z"]
    assert frame["a"].isna().sum() == 1


def test_file_url(tmp_path, table):
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    assert len(read_table(path.as_uri())) == 3


@pytest.fixture
def http_server(tmp_path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_url(tmp_path, table, http_server):
    table.to_csv(tmp_path / "t.csv", index=False)
    assert read_table(f"{http_server}/t.csv")["target"].tolist() == [0, 1, 0]


def test_http_404_is_not_transient(http_server):
    with pytest.raises(DataError, match="HTTP 404") as info:
        read_table(f"{http_server}/missing.csv")
    assert not isinstance(info.value, TransientReadError)


def test_unreachable_url_is_transient():
    with pytest.raises(TransientReadError, match="could not reach http://127.0.0.1:9/x.csv"):
        read_table("http://127.0.0.1:9/x.csv", timeout=2)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        read_table(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize("content,message", [
    (b"", "is empty \\(0 bytes\\)"),
    (b"a,b,target\n", "has a header but no data rows"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "does not look like a CSV file: it contains NUL bytes"),
    (b"a,b\n1,\xff\xfe\n", "not valid UTF-8 text: line 2"),
    (b"a,b\n1,2\n3,4,5,6\n", "could not be parsed as CSV"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_table(str(path))


def test_samples_are_named_classes():
    wine = load_sample("wine")
    assert set(wine["target"]) == {"class_0", "class_1", "class_2"}
    assert load_sample("diabetes")["target"].dtype.kind == "f"
    with pytest.raises(DataError, match="available: sklearn:wine"):
        read_table("sklearn:mnist")


def test_fingerprint_follows_content_not_format(tmp_path, table):
    table.to_parquet(tmp_path / "t.parquet", index=False)
    same = read_table(str(tmp_path / "t.parquet"))
    assert fingerprint(same) == fingerprint(table)
    changed = table.copy()
    changed.loc[0, "a"] = 9.0
    assert fingerprint(changed) != fingerprint(table)


def test_dataset_name():
    assert dataset_name("sklearn:wine") == "wine"
    assert dataset_name("https://host/data/iris.csv?x=1") == "iris"
    assert dataset_name("/tmp/sales.tar.parquet") == "sales"


def test_semicolon_csv_is_split_on_semicolons_and_says_so(tmp_path):
    path = tmp_path / "semi.csv"
    path.write_text("a;b;target\n1,5;2;x\n3;4;y\n")
    frame = read_table(str(path))
    assert list(frame.columns) == ["a", "b", "target"] and frame["target"].tolist() == ["x", "y"]
    assert "split on ';'" in frame.attrs["warnings"][0]


def test_utf16_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("a,target\n1,é\n2,ü\n".encode("utf-16"))
    frame = read_table(str(path))
    assert frame["target"].tolist() == ["é", "ü"] and "UTF-16" in frame.attrs["warnings"][0]


def test_renamed_columns_are_reported(tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("a,,a,target\n1,2,3,x\n")
    notes = " | ".join(read_table(str(path)).attrs["warnings"])
    assert "column 2 has no name; it is read as 'Unnamed: 1'" in notes and "'a' appears 2 times" in notes
    path.write_text("a,b,target\n1,2,x\n")
    assert read_table(str(path)).attrs["warnings"] == []


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("a,target\n" + "1,x\n" * 300_000)  # 1.2 MB
    with pytest.raises(DataError, match=r"larger than data.max_file_mb \(1 MB\)"):
        read_table(str(path), max_file_mb=1)
    assert len(read_table(str(path), max_file_mb=2)) == 300_000


def test_an_endless_stream_is_refused_without_reading_it_all():
    with pytest.raises(DataError, match="NUL bytes"):
        read_table("/dev/zero")


@pytest.mark.parametrize("block", [7, 64 * 2**20])
def test_the_longest_line_is_found_across_scan_blocks(tmp_path, block):
    from preprocessing.sources import _check_lines

    raw = b"a,target\n" + b"1" * 40 + b",x\n" + b"2,y"
    _check_lines("t.csv", raw, max_line_mb=1, block=block)
    long = b"a,target\n1,x\n" + b"9" * (2 * 2**20) + b",y\n3,z\n"
    with pytest.raises(DataError, match="line 3 is 2 MB long, more than data.max_line_mb"):
        _check_lines("t.csv", long, max_line_mb=1, block=block)
