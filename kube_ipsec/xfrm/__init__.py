"""kube_ipsec.xfrm"""
