package main

import "unsafe"

func uintptrOf(p *[4]uint32) uintptr { return uintptr(unsafe.Pointer(p)) }
