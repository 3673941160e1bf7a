//! A small real image: the host's static busybox (Debian's busybox-static) with a few applet
//! links, users, groups and a sticky /tmp.

use crate::image::{Image, ImageBuilder};
use crate::layer::{Compression, LayerBuilder};

/// Where Debian's busybox-static installs the binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\nuser:x:1000:\n";

/// Applets linked to busybox in the image.
pub const APPLETS: [&str; 4] = ["sh", "ls", "echo", "cat"];

/// Bytes of the host's busybox.
pub fn busybox_bytes() -> Vec<u8> {
    std::fs::read(HOST_BUSYBOX)
        .unwrap_or_else(|e| panic!("{HOST_BUSYBOX}: {e} (install Debian's busybox-static)"))
}

/// The busybox layer.
pub fn busybox_layer() -> LayerBuilder {
    let mut layer = LayerBuilder::new();
    layer.dir("bin");
    layer.file("bin/busybox", busybox_bytes()).mode(0o755);
    for applet in APPLETS {
        layer.symlink(&format!("bin/{applet}"), "busybox");
    }
    layer.dir("etc");
    layer.file("etc/passwd", PASSWD);
    layer.file("etc/group", GROUP);
    layer.dir("home/user").owner(1000, 1000).mode(0o750);
    layer.dir("root").mode(0o700);
    layer.dir("tmp").mode(0o1777);
    layer
}

/// The busybox image, its layer compressed with gzip.
pub fn busybox_image() -> Image {
    ImageBuilder::new()
        .layer(busybox_layer().build(Compression::Gzip))
        .build()
}
