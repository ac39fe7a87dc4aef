//! Image classifiers in torchvision's layout, loading torchvision state dicts by their own key
//! names ([`resnet`]).

pub mod resnet;
